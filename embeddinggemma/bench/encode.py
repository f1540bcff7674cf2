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
model FLOP utilization = analytic forward FLOPs of the real tokens (embeddinggemma.model.flops) / time / peak.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import time
from collections.abc import Callable
from typing import Literal

from embeddinggemma.bench.child import in_child
from embeddinggemma.bench.workloads import ENCODE_WORKLOADS, documents

PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}  # --device -> JAX's platform name, which is also PyTorch's device


@dataclasses.dataclass(frozen=True)
class EncodeBenchmark:
    """What `run` measures: a sentence-transformers checkpoint directory, on which device and in which dtype,
    our attention backends (a row each), the batch size per workload, and the timing repeats."""

    checkpoint: str
    device: Literal["cpu", "gpu"] = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    quantization: str | None = None  # ours only: int8 / int4 / mixed weights
    threads: int = os.cpu_count() or 1  # PyTorch's
    attention: tuple[str, ...] = ("auto",)
    layers: tuple[str, ...] = ("scanned",)  # our layers under lax.scan and/or "unrolled": a row each
    repeats: int = 3
    scale: int = 1  # multiplies every workload's document count
    batch_size: dict[str, int] = dataclasses.field(default_factory=lambda: {"short": 32, "long": 4})
    peak_tflops: float | None = None  # the device's dense peak for `dtype`: FLOP utilization
    only: str | None = None  # one workload


def _load(framework: str, impl: str | None, args: EncodeBenchmark, layers: str = "scanned"):
    """(encode(texts, batch_size) -> np.ndarray, token lengths(texts), peak device bytes() or None)."""
    if framework == "jax":
        import jax

        jax.config.update("jax_platforms", PLATFORMS[args.device])  # before the first device is touched

        from embeddinggemma.encode.encoder import EmbeddingGemma

        model = EmbeddingGemma.from_pretrained(
            args.checkpoint,
            dtype=args.dtype,
            attention_impl=impl,
            quantization=args.quantization,
            scan_layers=layers == "scanned",
        )
        device = jax.devices()[0]
        peak = (lambda: device.memory_stats()["peak_bytes_in_use"]) if args.device == "gpu" else None
        lengths = lambda xs: [len(x) for x in model.tokenizer.encode(xs)]  # noqa: E731
        return lambda xs, bs: model.encode(xs, batch_size=bs), lengths, peak

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    device = PLATFORMS[args.device]
    model = SentenceTransformer(args.checkpoint, device=device, model_kwargs={"dtype": getattr(torch, args.dtype)})

    def encode(xs: list[str], bs: int):
        with torch.inference_mode():
            return model.encode(xs, batch_size=bs, convert_to_numpy=True)

    lengths = lambda xs: model.tokenize(xs)["attention_mask"].sum(-1).tolist()  # noqa: E731
    return encode, lengths, torch.cuda.max_memory_allocated if args.device == "gpu" else None


def _measure(framework: str, impl: str | None, args: EncodeBenchmark, texts: dict, layers: str = "scanned") -> dict:
    """In a child: load one framework (one attention backend, one layer layout) and time every workload."""
    encode, lengths, peak = _load(framework, impl, args, layers)
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


def _peaks(r: dict) -> str:
    device = f", device {r['peak_device_gib']:.2f} GiB" if r["peak_device_gib"] is not None else ""
    return f"RSS {r['peak_rss_gib']:.2f} GiB{device}"


def _row(name: str, impl: str, ours: dict, ref: dict, args: EncodeBenchmark, flops: float | None) -> str:
    """One table row: tokens/s of both, their ratio, FLOP utilization (given the workload's `flops`),
    first calls, cosine gap."""
    import numpy as np

    rate = lambda r: sum(r["lengths"]) / r["steady_s"]  # noqa: E731
    mfu = lambda r: f" | {flops / r['steady_s'] / (args.peak_tflops * 1e12):.1%}" if flops else ""  # noqa: E731
    cos = np.abs(np.sum(ours["emb"].astype(np.float32) * ref["emb"].astype(np.float32), axis=-1) - 1).max()
    count, lo, hi = ENCODE_WORKLOADS[name]
    return (
        f"| {name}: {count * args.scale} x {lo}-{hi} tok ({sum(ours['lengths'])} tok) | {impl} | "
        f"{rate(ours):,.0f} | {rate(ref):,.0f} | {rate(ours) / rate(ref):.2f}x{mfu(ours)}{mfu(ref)} | "
        f"{ours['first_s']:.1f} | {ref['first_s']:.1f} | {cos:.1e} |"
    )


def run(args: EncodeBenchmark, report: Callable[[str], None] = print) -> int:
    """Both frameworks on both workloads (each in its own child process); `report`s the table line by line.
    Status 1 if sentence-transformers fails (a failing backend of ours is reported and skipped)."""
    from embeddinggemma.model.config import ModelConfig
    from embeddinggemma.model.flops import forward_flops

    texts = documents(args.checkpoint, args.scale)
    if args.only:
        texts = {args.only: texts[args.only]}
    cfg = ModelConfig.from_checkpoint_dir(args.checkpoint)
    quantized = f", ours {args.quantization} weights" if args.quantization else ""
    report(f"device {args.device}, dtype {args.dtype}{quantized}, {args.threads} threads, {os.cpu_count()} CPUs")
    ref = in_child(_measure, "torch", None, args, texts)
    if "error" in ref:
        report(f"sentence-transformers failed:\n{ref['error']}")
        return 1
    report(f"sentence-transformers peak: {_peaks(ref)}")
    mfu = " | ours MFU | ST MFU" if args.peak_tflops else ""
    rows = [f"| workload | attention | ours tok/s | ST tok/s | ratio{mfu} | ours first s | ST first s | max cos diff |"]
    rows.append("|---" * (rows[0].count("|") - 1) + "|")
    for impl, layers in itertools.product(args.attention, args.layers):
        label = impl if args.layers == ("scanned",) else f"{impl}, {layers}"
        ours = in_child(_measure, "jax", impl, args, texts, layers)
        if "error" in ours:
            report(f"ours with attention={label} failed:\n{ours['error']}")
            continue
        report(f"ours (attention={label}) peak: {_peaks(ours)}")
        for name in texts:
            flops = sum(sum(forward_flops(cfg, n)) for n in ours[name]["lengths"]) if args.peak_tflops else None
            rows.append(_row(name, label, ours[name], ref[name], args, flops))
            report(rows[-1])
    report("\n".join(rows))
    return 0
