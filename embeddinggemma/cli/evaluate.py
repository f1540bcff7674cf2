"""`embeddinggemma evaluate`: retrieval metrics (trec_eval) of a BEIR directory at each Matryoshka width."""

from __future__ import annotations

import argparse
import json
import sys

from embeddinggemma.cli.common import add_cache_args, add_model_args, load_model, positive_int, subparser
from embeddinggemma.encode.prompts import TITLE_PROMPT, Prompts
from embeddinggemma.eval import retrieval
from embeddinggemma.files import check_outputs, write_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "evaluate",
        "Retrieval metrics (trec_eval: nDCG@10, MAP@100, MRR@10, recall, precision) on a BEIR directory.",
        "embeddinggemma evaluate --data scifact --split test --dims 768,256 --output results.json",
        "Documents get the title prompt (title: none when untitled), queries the query prompt.",
    )
    p.add_argument("--data", required=True, help="BEIR directory: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--dims", help="Matryoshka widths, comma-separated (default: 768,512,256,128)")
    p.add_argument("--output", "-o", help="write {dim: {metric: value}} as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--query-prompt", help="literal query prefix (default: the model's query prompt)")
    p.add_argument("--document-prompt", help="literal prefix of untitled documents (default: the model's)")
    p.add_argument("--title-prompt", default=TITLE_PROMPT, help="prefix of titled documents")
    p.add_argument("--ignore-identical-ids", action="store_true", help="never count a document with the query's id")
    p.add_argument("--chunk", type=positive_int, default=16384, help="documents embedded and searched at once")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    add_cache_args(p)
    p.set_defaults(func=run)


def dims(spec: str | None, full: int, default: tuple[int, ...]) -> list[int]:
    """--dims "768,512": each 1..full; without it, the model's Matryoshka widths (`default`)."""
    if spec is None:
        return list(default)
    try:
        widths = [int(d) for d in spec.split(",")]
    except ValueError:
        raise ValueError(f"--dims {spec!r}: expected comma-separated integers, e.g. 768,512,256,128") from None
    bad = [d for d in widths if not 1 <= d <= full]
    if bad:
        raise ValueError(f"--dims {spec!r}: {bad[0]} is outside 1..{full}, this model's embedding width")
    return widths


def run(args: argparse.Namespace) -> None:
    if args.output:
        check_outputs({"--output": args.output}, [], overwrite=args.overwrite)
    data = retrieval.RetrievalSet.from_beir(args.data, args.split)
    model = load_model(args)
    widths = dims(args.dims, model.config.embedding_dim, model.config.matryoshka_dims)
    prompts = Prompts.for_model(model.config, args.query_prompt, args.document_prompt, args.title_prompt)
    print(f"{args.data} ({args.split}): {len(data.queries):,} queries, {len(data.texts):,} documents", file=sys.stderr)
    results = retrieval.evaluate(
        model,
        data,
        widths,
        prompts,
        batch_size=args.batch_size,
        chunk=args.chunk,
        ignore_identical_ids=args.ignore_identical_ids,
        progress=not args.no_progress,
    )
    names = list(retrieval.METRICS)
    print(f"{'dim':>5} " + " ".join(f"{n:>11}" for n in names))
    for dim, values in results.items():
        print(f"{dim:>5} " + " ".join(f"{values[n]:>11.4f}" for n in names))
    if args.output:
        text = json.dumps({str(dim): values for dim, values in results.items()}, indent=2) + "\n"
        write_atomic(args.output, lambda f: f.write(text.encode()))
