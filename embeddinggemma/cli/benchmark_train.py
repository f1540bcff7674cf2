"""`embeddinggemma benchmark-train`: our trainer against sentence-transformers' on the same data (`bench.train`)."""

from __future__ import annotations

import argparse

from embeddinggemma.bench.train import TrainBenchmark
from embeddinggemma.bench.train import run as run_benchmark
from embeddinggemma.checkpoint import locate
from embeddinggemma.cli.common import add_layers_option, add_model_option, subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "benchmark-train",
        "Fine-tuning speed of this trainer vs sentence-transformers' trainer on the same data and settings.",
        "embeddinggemma benchmark-train --model ~/models/embeddinggemma-300m --steps 12",
        "Needs torch and sentence-transformers.",
    )
    add_model_option(p)
    p.add_argument("--data", help="training rows (any train_file input; default: code search pairs from the stdlib)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64, help="tokens per query and per document")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where both trainers run (default: cpu)")
    p.add_argument("--grad-cache", type=int, help="GradCache chunk (CachedMultipleNegativesRankingLoss on ST's side)")
    p.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["ours", "sentence-transformers"], help="run one side")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile our step: XLA op time by component (embedding, attention, MLP, norms, head, loss, "
        "backward, optimizer) and idle time",
    )
    add_layers_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = TrainBenchmark(
        checkpoint=str(locate(args.model)),
        data=args.data,
        batch_size=args.batch_size,
        max_length=args.max_length,
        steps=args.steps,
        learning_rate=args.learning_rate,
        dtype=args.dtype,
        device=args.device,
        grad_cache=args.grad_cache,
        seed=args.seed,
        only=args.only,
        layers=tuple(args.layers.split(",")),
        profile=args.profile,
        **({"threads": args.threads} if args.threads else {}),
    )
    return run_benchmark(options, lambda line: print(line, flush=True))
