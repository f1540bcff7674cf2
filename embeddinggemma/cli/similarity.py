"""`embeddinggemma similarity`: the cosine table between two lists of texts (or within one)."""

from __future__ import annotations

import argparse

from embeddinggemma.cli.common import add_cache_args, add_model_args, add_prompt_args, clip, load_model, subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "similarity",
        "Cosine similarity between two lists of texts (or within one).",
        "embeddinggemma similarity --prompt-name STS -a 'The cat sits.' 'A dog runs.' -b 'A kitten is sitting.'",
    )
    p.add_argument("-a", nargs="+", required=True, metavar="TEXT", help="the first list (table rows)")
    p.add_argument("-b", nargs="+", metavar="TEXT", help="the second list (table columns; default: the first)")
    add_prompt_args(p)
    add_model_args(p, batch=False)
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    texts_b = args.b or args.a
    model = load_model(args)
    kwargs = {"prompt_name": args.prompt_name, "prompt": args.prompt, "truncate_dim": args.truncate_dim}
    scores = model.similarity(model.encode(args.a, **kwargs), model.encode(texts_b, **kwargs))
    width = max(len(clip(t, 30)) for t in args.a)
    print(" " * width + "".join(f"  [{j}]  " for j in range(len(texts_b))))
    for text, row in zip(args.a, scores, strict=True):
        print(clip(text, 30).ljust(width) + "".join(f"  {s:.3f}" for s in row))
    for j, text in enumerate(texts_b):
        print(f"[{j}] {clip(text)}")
