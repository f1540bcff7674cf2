"""`embeddinggemma encode`: a text or JSONL file into a .npy, in resumable shards."""

from __future__ import annotations

import argparse
import sys

from embeddinggemma.cli.common import (
    add_cache_args,
    add_model_args,
    add_prompt_args,
    load_model,
    positive_int,
    subparser,
)
from embeddinggemma.corpus.encode_job import EncodeJob
from embeddinggemma.encode.precision import BINARY_PRECISIONS, PRECISIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "encode",
        "Embed a text file (one text a line) or JSONL (a text field) into a .npy, in resumable shards.",
        "embeddinggemma encode --input docs.jsonl --output docs.npy --prompt-name document --ids-output docs.ids.jsonl",
        "An interrupted run resumes from its last finished shard when rerun with the same arguments.",
    )
    p.add_argument("--input", "-i", required=True, help="a .txt file (one text a line) or .jsonl file")
    p.add_argument(
        "--output", "-o", required=True, help="the .npy to write (a row per text; float32 or --precision's dtype)"
    )
    p.add_argument("--ids-output", help="also write a JSONL with each row's id (JSONL id field, else line number)")
    p.add_argument("--overwrite", action="store_true", help="replace --output / --ids-output if they exist")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--shard-size", type=positive_int, default=2048, help="texts per resumable shard (default: 2048)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="quantize as sentence-transformers' quantize_embeddings: int8/uint8 (one byte a dim, needs "
        "--calibration), binary/ubinary (one bit a dim, packed into int8/uint8 bytes) (default: float32)",
    )
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="int8/uint8: a .npy of float embeddings (e.g. a float32 encode of a sample) whose per-dim min and "
        "max set the 255 buckets of every shard",
    )
    add_prompt_args(p)
    add_model_args(p)
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    job = EncodeJob.prepare(
        args.input,
        args.output,
        ids_out=args.ids_output,
        text_field=args.text_field,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        precision=args.precision,
        calibration=args.calibration,
    )
    model = load_model(args)
    emb = job.run(
        model,
        model_id=args.model,
        prompt_name=args.prompt_name,
        prompt=args.prompt,
        truncate_dim=args.truncate_dim,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    packed = f" ({args.precision}: 8 dims a byte)" if args.precision in BINARY_PRECISIONS else ""
    print(f"wrote {args.output}: {emb.shape[0]} x {emb.shape[1]} {emb.dtype}{packed}")
