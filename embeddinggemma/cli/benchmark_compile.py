"""`embeddinggemma benchmark-compile`: compile time with the layers scanned vs unrolled (`bench.compile`)."""

from __future__ import annotations

import argparse

import jax

from embeddinggemma.bench import compile as compile_bench
from embeddinggemma.checkpoint import read_config
from embeddinggemma.cli.common import add_model_option, choice_list, positive_int, subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "benchmark-compile",
        "Trace, lower and compile time of the encode, train and serve programs, layers scanned vs unrolled.",
        "embeddinggemma benchmark-compile --model ~/models/embeddinggemma-300m --tpu v5e:2x4",
        "Reads the checkpoint's config only (no weights); nothing comes from the persistent compilation cache.",
    )
    add_model_option(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument(
        "--serve-max-input-tokens",
        type=positive_int,
        default=512,
        help="the server's --max-input-tokens (default: 512)",
    )
    p.add_argument(
        "--programs",
        type=choice_list(compile_bench.PROGRAMS),
        default=compile_bench.PROGRAMS,
        help="comma-separated rows: encode (3 shapes), depth (twice the layers), train (plain and GradCache), "
        "serve (the warm-up's shapes) (default: all)",
    )
    p.add_argument("--tpu", metavar="TOPOLOGY", help="also the AOT encode and train steps, e.g. v5e:2x4 (tpu extra)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    cfg = read_config(args.model)
    device = jax.devices()[0]
    print(f"{args.model}: {cfg.num_layers} layers; {device.platform} ({device.device_kind}), {args.dtype}", flush=True)
    print(compile_bench.HEADER, flush=True)
    for row in compile_bench.rows(
        cfg, programs=args.programs, dtype=args.dtype, serve_length=args.serve_max_input_tokens, tpu=args.tpu
    ):
        print(row.line(), flush=True)
