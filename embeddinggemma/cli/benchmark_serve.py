"""`embeddinggemma benchmark-serve`: load on any OpenAI-compatible embedding server (`bench.serve`)."""

from __future__ import annotations

import argparse
import os

from embeddinggemma.bench.serve import LoadTest
from embeddinggemma.bench.serve import run as run_load
from embeddinggemma.cli.common import subparser


def levels(spec: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"--concurrency {spec!r}: expected comma-separated positive integers, e.g. 1,8,32") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--concurrency {spec!r}: expected comma-separated positive integers, e.g. 1,8,32")
    return counts


def word_range(spec: str) -> tuple[int, int]:
    lo, sep, hi = spec.partition("-")
    try:
        lo_n, hi_n = int(lo), int(hi if sep else lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, e.g. 1000-1400, got {spec!r}") from None
    if not 1 <= lo_n <= hi_n:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {spec!r}")
    return lo_n, hi_n


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "benchmark-serve",
        "Load-test an OpenAI-compatible embedding server: texts/s, tokens/s, p50/p99 latency, errors per level.",
        "embeddinggemma benchmark-serve --url http://127.0.0.1:8080 --concurrency 1,8,32 --workloads short,long",
        "Works against any server with /v1/embeddings (this one, infinity-emb, text-embeddings-inference).",
    )
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL (default: %(default)s)")
    p.add_argument("--model-name", help="the `model` to send (default: the first of GET /v1/models)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("EMBEDDINGGEMMA_API_KEY"),
        help="sent as 'Authorization: Bearer KEY' (default: $EMBEDDINGGEMMA_API_KEY)",
    )
    p.add_argument("--concurrency", default="1,8,32", help="client counts, comma-separated (default: %(default)s)")
    p.add_argument(
        "--workloads", default="short,long", help="short (20-80 words), long (--long-words) (default: %(default)s)"
    )
    p.add_argument("--requests", type=int, default=64, help="requests per workload and level (default: 64)")
    p.add_argument("--inputs-per-request", type=int, default=1, help="texts per request (default: 1)")
    p.add_argument(
        "--long-words", type=word_range, default=(1000, 1400), help="words of a long text (default: 1000-1400)"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: 600)")
    p.add_argument("--seed", type=int, default=0, help="for the texts (default: 0)")
    p.add_argument("--output", "-o", help="also write the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    test = LoadTest(
        url=args.url,
        model_name=args.model_name,
        api_key=args.api_key,
        concurrency=levels(args.concurrency),
        workloads=tuple(w.strip() for w in args.workloads.split(",")),
        requests=args.requests,
        inputs_per_request=args.inputs_per_request,
        long_words=args.long_words,
        timeout=args.timeout,
        seed=args.seed,
        output=args.output,
    )
    return run_load(test, lambda line: print(line, flush=True))
