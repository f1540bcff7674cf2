"""`embeddinggemma convert`: a sentence-transformers directory to a native checkpoint, or back."""

from __future__ import annotations

import argparse

from embeddinggemma.checkpoint import convert
from embeddinggemma.cli.common import subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "convert",
        "Convert a sentence-transformers directory or Hub id to a native checkpoint, or back.",
        "embeddinggemma convert google/embeddinggemma-300m ckpt/native\nembeddinggemma convert ckpt/native ckpt/st",
    )
    p.add_argument("src", help="HF/ST directory, Hub id, or native checkpoint (the direction follows it)")
    p.add_argument("dst", help="output directory; must not exist (written atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    source = convert(args.src, args.dst)
    target = "native" if source.format == "sentence-transformers" else "sentence-transformers"
    print(f"{args.dst}  ({source.format} -> {target})")
