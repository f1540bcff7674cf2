"""`embeddinggemma benchmark`: throughput of our JAX encoder vs sentence-transformers (PyTorch) on the
same texts and machine, in one run. Needs torch and sentence-transformers.

    embeddinggemma benchmark --model DIR [--dtype float32|bfloat16] [--threads N]
    embeddinggemma benchmark --model DIR --device gpu --dtype bfloat16 --scale 16 \
        --short-batch 256 --long-batch 32 --attention auto,blocked --peak-tflops 989

Workloads: (a) 256 short documents of 30-120 tokens, (b) 16 long documents of 1500-2048 tokens, each
count multiplied by --scale (a GPU needs more work per call than a CPU; token counts include
<bos>/<eos>; both frameworks see the same strings). Each framework, and each of our attention backends,
runs in its own child process, one after the other, so peak memory is its own, a backend that fails
does not take the others down, and nothing competes for cores. Per workload: the first encode call
(JAX: compilation; PyTorch: allocator and kernel warm-up) is reported separately, then the median of
--repeats timed calls gives steady-state tokens/s. PyTorch gets torch.set_num_threads(--threads);
XLA's CPU backend uses one thread per core. With --peak-tflops (the device's dense peak for --dtype),
model FLOP utilization = analytic forward FLOPs of the real tokens (embeddinggemma.flops) / time / peak.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing as mp
import os
import queue
import random
import resource
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORKLOADS = {"short": (256, 30, 120), "long": (16, 1500, 2048)}  # count, min tokens, max tokens
_WORDS = (
    "the model encodes text into dense vectors for search retrieval and clustering while a sliding window "
    "attention layer sees nearby tokens and global layers see everything results show that training with "
    "hard negatives improves recall on multilingual benchmarks der die das und la le les de 東京 北京 "
    "Москва код функция return value planet orbit 42 3.14 (x + y) * z"
).split()


def make_texts(checkpoint: str, scale: int = 1, seed: int = 0) -> dict[str, list[str]]:
    """Deterministic documents cut to a random token count in each workload's range."""
    from embeddinggemma.config import ModelConfig
    from embeddinggemma.tokenizer import Tokenizer

    tok = Tokenizer(Path(checkpoint) / "tokenizer.model", ModelConfig.from_checkpoint_dir(checkpoint))
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    for name, (count, lo, hi) in WORKLOADS.items():
        texts = []
        for _ in range(count * scale):
            target = rng.randint(lo, hi)
            words = [rng.choice(_WORDS) for _ in range(target)]  # >= 1 token per word: long enough
            n_tokens = lambda n, words=words: len(tok.sp.encode(" ".join(words[:n]))) + 2  # noqa: E731 (+ bos, eos)
            keep = bisect.bisect_right(range(target + 1), target, key=n_tokens) - 1  # most words within target
            texts.append(" ".join(words[:keep]))
        out[name] = texts
    return out


def _load(framework: str, impl: str | None, args: argparse.Namespace):
    """(encode(texts, batch_size) -> np.ndarray, token lengths(texts), peak device bytes() or None)."""
    if framework == "jax":
        os.environ.setdefault("JAX_PLATFORMS", {"cpu": "cpu", "gpu": "cuda"}[args.device])
        import jax

        from embeddinggemma import EmbeddingGemma

        model = EmbeddingGemma.from_pretrained(
            args.checkpoint, dtype=args.dtype, attention_impl=impl, quantization=args.quantization
        )
        device = jax.devices()[0]
        peak = (lambda: device.memory_stats()["peak_bytes_in_use"]) if args.device == "gpu" else None
        lengths = lambda xs: [len(x) for x in model.tokenizer.encode(xs)]  # noqa: E731
        return lambda xs, bs: model.encode(xs, batch_size=bs), lengths, peak

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    device = {"cpu": "cpu", "gpu": "cuda"}[args.device]
    model = SentenceTransformer(args.checkpoint, device=device, model_kwargs={"dtype": getattr(torch, args.dtype)})

    def encode(xs: list[str], bs: int):
        with torch.inference_mode():
            return model.encode(xs, batch_size=bs, convert_to_numpy=True)

    lengths = lambda xs: model.tokenize(xs)["attention_mask"].sum(-1).tolist()  # noqa: E731
    return encode, lengths, torch.cuda.max_memory_allocated if args.device == "gpu" else None


def _measure(framework: str, impl: str | None, args: argparse.Namespace, texts: dict) -> dict:
    """In a child: load one framework (one attention backend) and time every workload."""
    encode, lengths, peak = _load(framework, impl, args)
    results: dict = {}
    for name, xs in texts.items():
        bs = args.batch_size[name]
        t0 = time.perf_counter()
        encode(xs, bs)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            emb = encode(xs, bs)
            times.append(time.perf_counter() - t0)
        results[name] = {"lengths": lengths(xs), "first_s": first, "steady_s": statistics.median(times), "emb": emb}
    results["peak_device_gib"] = peak() / 2**30 if peak else None
    return results


def _report(fn: Callable[..., dict], args: tuple, out: mp.Queue) -> None:
    try:
        result = fn(*args)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out.put(result)
    except Exception:
        out.put({"error": traceback.format_exc(limit=3)})


def in_child(fn: Callable[..., dict], *args: Any) -> dict:
    """`fn(*args)` (a module-level function) in a fresh spawned process, so memory, threads and cores are
    its own; adds its peak RSS. An exception, or a crash that reports nothing, comes back as {"error": ...}."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_report, args=(fn, args, out))
    proc.start()
    while True:
        try:
            result = out.get(timeout=10)
            break
        except queue.Empty:
            if not proc.is_alive():
                result = {"error": f"child process exited with code {proc.exitcode} before reporting"}
                break
    proc.join()
    return result


def _peaks(r: dict) -> str:
    device = f", device {r['peak_device_gib']:.2f} GiB" if r["peak_device_gib"] is not None else ""
    return f"RSS {r['peak_rss_gib']:.2f} GiB{device}"


def _row(name: str, impl: str, ours: dict, ref: dict, args: argparse.Namespace, flops: float | None) -> str:
    """One table row: tokens/s of both, their ratio, FLOP utilization (given the workload's `flops`),
    first calls, cosine gap."""
    import numpy as np

    rate = lambda r: sum(r["lengths"]) / r["steady_s"]  # noqa: E731
    mfu = lambda r: f" | {flops / r['steady_s'] / (args.peak_tflops * 1e12):.1%}" if flops else ""  # noqa: E731
    cos = np.abs(np.sum(ours["emb"].astype(np.float32) * ref["emb"].astype(np.float32), axis=-1) - 1).max()
    count, lo, hi = WORKLOADS[name]
    return (
        f"| {name}: {count * args.scale} x {lo}-{hi} tok ({sum(ours['lengths'])} tok) | {impl} | "
        f"{rate(ours):,.0f} | {rate(ref):,.0f} | {rate(ours) / rate(ref):.2f}x{mfu(ours)}{mfu(ref)} | "
        f"{ours['first_s']:.1f} | {ref['first_s']:.1f} | {cos:.1e} |"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--quantization",
        choices=["int8", "int4", "mixed"],  # weight_quantization.MODES (not imported: jax loads in the children)
        help="store our weights int8 / int4 / mixed (sentence-transformers' stay float)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--attention", default="auto", help="our attention backend(s), comma-separated: a row each")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scale", type=int, default=1, help="multiply every workload's document count")
    p.add_argument("--short-batch", type=int, default=32)
    p.add_argument("--long-batch", type=int, default=4)
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak for --dtype: prints FLOP utilization")
    p.add_argument("--only", choices=["short", "long"], help="run one workload")


def run(args: argparse.Namespace) -> int:
    """Both frameworks on both workloads (each in its own child process); prints the table."""
    from embeddinggemma.checkpoint import locate

    args.checkpoint = str(locate(args.model))  # a sentence-transformers directory: both sides load it
    args.batch_size = {"short": args.short_batch, "long": args.long_batch}
    texts = make_texts(args.checkpoint, args.scale)
    if args.only:
        texts = {args.only: texts[args.only]}
    from embeddinggemma.config import ModelConfig
    from embeddinggemma.flops import forward_flops

    cfg = ModelConfig.from_checkpoint_dir(args.checkpoint)

    quantized = f", ours {args.quantization} weights" if args.quantization else ""
    print(
        f"device {args.device}, dtype {args.dtype}{quantized}, {args.threads} threads, {os.cpu_count()} CPUs",
        flush=True,
    )
    ref = in_child(_measure, "torch", None, args, texts)
    if "error" in ref:
        print(f"sentence-transformers failed:\n{ref['error']}")
        return 1
    print(f"sentence-transformers peak: {_peaks(ref)}", flush=True)
    mfu = " | ours MFU | ST MFU" if args.peak_tflops else ""
    rows = [f"| workload | attention | ours tok/s | ST tok/s | ratio{mfu} | ours first s | ST first s | max cos diff |"]
    rows.append("|---" * (rows[0].count("|") - 1) + "|")
    for impl in args.attention.split(","):
        ours = in_child(_measure, "jax", impl, args, texts)
        if "error" in ours:
            print(f"ours with attention={impl} failed:\n{ours['error']}", flush=True)
            continue
        print(f"ours (attention={impl}) peak: {_peaks(ours)}", flush=True)
        for name in texts:
            flops = sum(sum(forward_flops(cfg, n)) for n in ours[name]["lengths"]) if args.peak_tflops else None
            rows.append(_row(name, impl, ours[name], ref[name], args, flops))
            print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0
