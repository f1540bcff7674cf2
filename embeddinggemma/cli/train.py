"""`embeddinggemma train`: fine-tune with the contrastive Matryoshka loss from a JSON TrainConfig."""

from __future__ import annotations

import argparse
import json

from embeddinggemma.cli.common import add_cache_args, subparser
from embeddinggemma.errors import InputError, parse_json
from embeddinggemma.train.config import TrainConfig
from embeddinggemma.train.loop import train

PREEMPTED = 143  # after SIGTERM, once its checkpoint is saved: rerun with --resume


def override(item: str) -> tuple[str, object]:
    """--set KEY=VALUE: VALUE is JSON (numbers, true, null, lists), else a bare string."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    try:
        return key, parse_json(value)
    except InputError:
        return key, value


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "train",
        "Fine-tune with the contrastive Matryoshka loss.",
        "embeddinggemma train --config train_v5e-8 --set model=~/models/embeddinggemma-300m "
        "--set train_file=data/train.jsonl",
        f"Exit status {PREEMPTED} after SIGTERM (a checkpoint is saved): rerun with --resume.",
    )
    p.add_argument("--config", required=True, help="a JSON TrainConfig file, or a bundled one: train_tiny, ...")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in output_dir (and its export)")
    p.add_argument(
        "--set",
        type=override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (JSON value), e.g. --set steps=100 --set output_dir=runs/x",
    )
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig.from_file(args.config, **dict(args.set))
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps(result, indent=2))
    return PREEMPTED if result["status"] == "preempted" else 0
