"""Throughput of our JAX encoder vs sentence-transformers (PyTorch) on the same texts and machine.

    python scripts/benchmark.py --checkpoint DIR [--dtype float32|bfloat16] [--threads N]

Workloads: (a) 256 short documents of 30-120 tokens, (b) 16 long documents of 1500-2048 tokens
(token counts include <bos>/<eos>; both frameworks see the same strings). Each framework runs in its
own child process, one after the other, so peak memory (max RSS) is its own and the two never
compete for cores. Per workload: the first encode call (JAX: compilation; PyTorch: allocator and
kernel warm-up) is reported separately, then the median of --repeats timed calls gives steady-state
tokens/s. PyTorch gets torch.set_num_threads(--threads); XLA's CPU backend uses one thread per core.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing as mp
import os
import random
import resource
import statistics
import time
from pathlib import Path

WORKLOADS = {"short": (256, 30, 120), "long": (16, 1500, 2048)}  # count, min tokens, max tokens
_WORDS = (
    "the model encodes text into dense vectors for search retrieval and clustering while a sliding window "
    "attention layer sees nearby tokens and global layers see everything results show that training with "
    "hard negatives improves recall on multilingual benchmarks der die das und la le les de 東京 北京 "
    "Москва код функция return value planet orbit 42 3.14 (x + y) * z"
).split()


def make_texts(checkpoint: str, seed: int = 0) -> dict[str, list[str]]:
    """Deterministic documents cut to a random token count in each workload's range."""
    from embeddinggemma.config import ModelConfig
    from embeddinggemma.tokenizer import Tokenizer

    tok = Tokenizer(Path(checkpoint) / "tokenizer.model", ModelConfig.from_checkpoint_dir(checkpoint))
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    for name, (count, lo, hi) in WORKLOADS.items():
        texts = []
        for _ in range(count):
            target = rng.randint(lo, hi)
            words = [rng.choice(_WORDS) for _ in range(target)]  # >= 1 token per word: long enough
            n_tokens = lambda n, words=words: len(tok.encode([" ".join(words[:n])])[0])  # noqa: E731
            keep = bisect.bisect_right(range(target + 1), target, key=n_tokens) - 1  # most words within target
            texts.append(" ".join(words[:keep]))
        out[name] = texts
    return out


def _run(framework: str, args: argparse.Namespace, texts: dict[str, list[str]], queue: mp.Queue) -> None:
    """Child process: load one framework, time every workload, report, exit."""
    if framework == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        from embeddinggemma import EmbeddingGemma

        model = EmbeddingGemma.from_pretrained(args.checkpoint, dtype=args.dtype, attention_impl=args.attention)
        encode = lambda xs, bs: model.encode(xs, batch_size=bs)  # noqa: E731
        tokens = lambda xs: sum(len(x) for x in model.tokenizer.encode(xs))  # noqa: E731
    else:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(args.threads)
        model = SentenceTransformer(
            args.checkpoint, device="cpu", model_kwargs={"torch_dtype": getattr(torch, args.dtype)}
        )

        def encode(xs: list[str], bs: int):
            with torch.inference_mode():
                return model.encode(xs, batch_size=bs, convert_to_numpy=True)

        tokens = lambda xs: int(model.tokenize(xs)["attention_mask"].sum())  # noqa: E731
    results = {}
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
        results[name] = {
            "tokens": tokens(xs),
            "first_s": first,
            "steady_s": statistics.median(times),
            "emb": emb,
        }
    results["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    queue.put(results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=os.environ.get("EMBEDDINGGEMMA_CHECKPOINT"))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--attention", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--short-batch", type=int, default=32)
    p.add_argument("--long-batch", type=int, default=4)
    p.add_argument("--only", choices=["short", "long"], help="run one workload")
    args = p.parse_args(argv)
    if not args.checkpoint:
        p.error("pass --checkpoint or set EMBEDDINGGEMMA_CHECKPOINT")
    args.batch_size = {"short": args.short_batch, "long": args.long_batch}
    texts = make_texts(args.checkpoint)
    if args.only:
        texts = {args.only: texts[args.only]}
    ctx = mp.get_context("spawn")
    res = {}
    for framework in ("jax", "torch"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(framework, args, texts, queue))
        proc.start()
        res[framework] = queue.get()
        proc.join()

    import numpy as np

    print(f"dtype {args.dtype}, {args.threads} threads, attention={args.attention}, {os.cpu_count()} CPUs")
    print("| workload | ours tok/s | ST tok/s | ratio | ours first call s | ST first call s | max cos diff |")
    print("|---|---|---|---|---|---|---|")
    for name in texts:
        ours, ref = res["jax"][name], res["torch"][name]
        cos = np.abs(np.sum(ours["emb"] * ref["emb"], axis=-1) - 1).max()
        rate = lambda r: r["tokens"] / r["steady_s"]  # noqa: E731
        count, lo, hi = WORKLOADS[name]
        print(
            f"| {name}: {count} x {lo}-{hi} tok ({ours['tokens']} tok) | {rate(ours):,.0f} | {rate(ref):,.0f} | "
            f"{rate(ours) / rate(ref):.2f}x | {ours['first_s']:.1f} | {ref['first_s']:.1f} | {cos:.1e} |"
        )
    peak = {k: f"{v['peak_rss_gib']:.2f} GiB" for k, v in res.items()}
    print(f"peak RSS (whole process): ours {peak['jax']}, sentence-transformers {peak['torch']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
