"""`embeddinggemma mteb`: MTEB tasks with the prompts of mteb's google/embeddinggemma-300m entry (`eval.mteb`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from embeddinggemma.cli.common import add_cache_args, add_model_args, load_model, subparser
from embeddinggemma.eval.mteb import MtebEncoder, evaluate, get_tasks


def names(value: str) -> list[str]:
    found = [name.strip() for name in value.split(",") if name.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {value!r}")
    return found


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "mteb",
        "Run MTEB tasks on this encoder with the prompts of mteb's google/embeddinggemma-300m entry.",
        "embeddinggemma mteb --tasks SciFact,STS12 --output results/mteb --dtype bfloat16",
        "Needs the mteb extra; downloads the tasks' data.",
    )
    add_model_args(p)
    p.add_argument("--tasks", required=True, type=names, help="comma-separated MTEB task names, e.g. SciFact,STS12")
    p.add_argument(
        "--output",
        "-o",
        required=True,
        type=Path,
        metavar="DIR",
        help="mteb's results folder: DIR/results/<model>/.../<task>.json; tasks with results there are skipped",
    )
    p.add_argument("--languages", type=names, help="only these languages of multilingual tasks, e.g. eng,deu")
    p.add_argument("--truncate-dim", type=int, help="Matryoshka: keep the first D dims (768, 512, 256 or 128)")
    p.add_argument("--overwrite", action="store_true", help="rerun tasks that already have results in DIR")
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    tasks = get_tasks(args.tasks, args.languages)  # before loading the model: a typo fails fast
    model = load_model(args)
    name = f"embeddinggemma-jax/{Path(args.model).resolve().name}"
    encoder = MtebEncoder(model, name=name, truncate_dim=args.truncate_dim)
    for task, score in evaluate(encoder, tasks, args.output, batch_size=args.batch_size, overwrite=args.overwrite):
        print(f"{task:<40} {score:.5f}")
    print(f"results in {args.output}")
