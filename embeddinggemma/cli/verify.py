"""`embeddinggemma verify`: this machine's vectors against the reference, every backend and dtype (`eval.verify`)."""

from __future__ import annotations

import argparse

from embeddinggemma.cli.common import add_cache_args, add_model_args, subparser
from embeddinggemma.eval.verify import GOLDEN, verify


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "verify",
        "Check that this machine gives the reference vectors: every backend and dtype, against golden vectors.",
        "embeddinggemma verify --model ~/models/embeddinggemma-300m --attention all --dtype float32,bfloat16\n"
        "embeddinggemma verify --model runs/ft/export --reference sentence-transformers",
        "--dtype and --attention take comma-separated lists (--attention all: every backend of this platform). "
        "Exit status 0 only if every row passes. Paste the report into bug reports.",
    )
    add_model_args(p)
    p.add_argument(
        "--reference",
        choices=("golden", "sentence-transformers"),
        default="golden",
        help="golden: the vectors shipped with this package (the official checkpoint only; default); "
        "sentence-transformers: a live SentenceTransformer on CPU (any checkpoint; needs torch)",
    )
    p.add_argument("--golden", default=str(GOLDEN), help=argparse.SUPPRESS)  # tests: vectors of another model
    p.add_argument(
        "--peak-tflops", type=float, help="the device's dense peak for the MFU figure (default: known chips)"
    )
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists")
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    passed = verify(
        args.model,
        reference=args.reference,
        golden=args.golden,
        attention=args.attention,
        dtypes=tuple(args.dtype.split(",")),
        quantization=args.quantization,
        mesh=args.mesh,
        batch_size=args.batch_size,
        peak_tflops=args.peak_tflops,
        json_path=args.json,
        overwrite=args.overwrite,
        report=lambda line: print(line, flush=True),
    )
    return 0 if passed else 1
