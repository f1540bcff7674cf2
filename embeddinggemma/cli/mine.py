"""`embeddinggemma mine`: hard negatives for (query, positive) pairs, as sentence-transformers mines them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embeddinggemma.cli.common import add_cache_args, add_model_args, load_model, positive_int, subparser
from embeddinggemma.encode.prompts import Prompts
from embeddinggemma.errors import parse_json
from embeddinggemma.eval import mining
from embeddinggemma.train.sources import Columns, examples, open_rows


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "mine",
        "Mine hard negatives for (query, positive) pairs, as sentence-transformers' mine_hard_negatives.",
        "embeddinggemma mine --input pairs.jsonl --output mined.jsonl --num-negatives 5 --relative-margin 0.05",
        "The output is a training input: JSONL (negatives list) or Parquet (negative_1..K). Rerun to resume.",
    )
    p.add_argument("--input", "-i", required=True, help="pairs in any training input format (JSONL, Parquet, ...)")
    p.add_argument("--output", "-o", required=True, help="a .jsonl or .parquet file")
    p.add_argument("--corpus", help="more candidates: a .txt (one a line) or .jsonl file (default: the positives)")
    p.add_argument("--text-field", default="text", help="the --corpus JSONL's text field (default: text)")
    p.add_argument("--columns", help='JSON column mapping, e.g. \'{"query": "question", "positive": "answer"}\'')
    p.add_argument("--num-negatives", type=positive_int, default=3, help="negatives per row (default: 3)")
    p.add_argument("--range-min", type=int, default=0, help="skip the N best candidates (default: 0)")
    p.add_argument("--range-max", type=positive_int, help="consider only the N best (default: derived)")
    p.add_argument("--max-score", type=float, help="drop candidates scoring above this")
    p.add_argument("--min-score", type=float, help="drop candidates scoring below this")
    p.add_argument("--absolute-margin", type=float, help="drop candidates within this of the positive's score")
    p.add_argument("--relative-margin", type=float, help="drop candidates above (1 - m) x the positive's score")
    p.add_argument("--sampling", choices=("top", "random"), default="top", help="the best, or random (default: top)")
    p.add_argument("--seed", type=int, default=0, help="for --sampling random (default: 0)")
    p.add_argument("--shard-size", type=positive_int, default=2048, help="texts per resumable embedding shard")
    p.add_argument("--query-prompt", help="literal query prefix (default: the model's query prompt)")
    p.add_argument("--document-prompt", help="literal candidate prefix (default: the model's document prompt)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    options = mining.MineOptions(
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        max_score=args.max_score,
        min_score=args.min_score,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        sampling=args.sampling,
        seed=args.seed,
    )
    options.window(1)  # bad options fail before anything is read
    columns = Columns.from_config(parse_json(args.columns, "--columns")) if args.columns else None
    inputs = [args.input] if Path(args.input).exists() else []
    pairs = list(examples(open_rows(args.input, columns)))
    job = mining.MineJob(
        pairs, args.output, corpus=args.corpus, inputs=inputs, text_field=args.text_field, overwrite=args.overwrite
    )
    print(f"{len(pairs):,} pairs, {len(job.queries):,} distinct queries, {len(job.candidates):,} candidates")
    options.window(1, len(job.candidates))  # --num-negatives within the corpus, before the model loads
    model = load_model(args)
    prompts = Prompts.for_model(model.config, args.query_prompt, args.document_prompt)
    query_emb, candidate_emb = job.embed(
        model,
        model_id=args.model,
        query_prompt=model.prompt_prefix(prompt=prompts.query),
        document_prompt=model.prompt_prefix(prompt=prompts.document),
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    result = mining.mine(pairs, query_emb, candidate_emb, job.candidates, options, mesh=model.mesh)
    print(mining.summary(result, options))
    job.finish(result)
    print(f"wrote {args.output}: {len(result.queries):,} rows, {options.num_negatives} negatives a row")
