"""`embeddinggemma benchmark`: our encoder against sentence-transformers on the same texts (`bench.encode`)."""

from __future__ import annotations

import argparse
import os

from embeddinggemma.bench.encode import EncodeBenchmark
from embeddinggemma.bench.encode import run as run_benchmark
from embeddinggemma.checkpoint import locate
from embeddinggemma.cli.common import add_layers_option, add_model_option, subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "benchmark",
        "Throughput of this encoder vs sentence-transformers on the same texts, in one run.",
        "embeddinggemma benchmark --model ~/models/embeddinggemma-300m --dtype bfloat16",
        "Needs torch and sentence-transformers.",
    )
    add_model_option(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--quantization",
        choices=["int8", "int4", "mixed"],
        help="store our weights int8 / int4 / mixed (sentence-transformers' stay float)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--attention", default="auto", help="our attention backend(s), comma-separated: a row each")
    add_layers_option(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scale", type=int, default=1, help="multiply every workload's document count")
    p.add_argument("--short-batch", type=int, default=32)
    p.add_argument("--long-batch", type=int, default=4)
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak for --dtype: prints FLOP utilization")
    p.add_argument("--only", choices=["short", "long"], help="run one workload")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = EncodeBenchmark(
        checkpoint=str(locate(args.model)),  # a sentence-transformers directory: both sides load it
        device=args.device,
        dtype=args.dtype,
        quantization=args.quantization,
        threads=args.threads,
        attention=tuple(args.attention.split(",")),
        layers=tuple(args.layers.split(",")),
        repeats=args.repeats,
        scale=args.scale,
        batch_size={"short": args.short_batch, "long": args.long_batch},
        peak_tflops=args.peak_tflops,
        only=args.only,
    )
    return run_benchmark(options, lambda line: print(line, flush=True))
