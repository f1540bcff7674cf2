"""`embeddinggemma search`: top-k semantic search of a text / JSONL corpus or of embeddings saved by `encode`."""

from __future__ import annotations

import argparse
from pathlib import Path

from embeddinggemma.cli.common import add_cache_args, add_model_args, clip, load_model, positive_int, subparser
from embeddinggemma.corpus.readers import bundled_corpus, load_embeddings, read_records
from embeddinggemma.corpus.search import search
from embeddinggemma.encode.precision import BINARY_PRECISIONS, quantize_embeddings


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "search",
        "Top-k semantic search of a corpus (a text/JSONL file, or embeddings saved by `encode`).",
        "embeddinggemma search --query 'Which planet is known as the Red Planet?' -k 3\n"
        "embeddinggemma search --corpus docs.npy --texts docs.jsonl --query 'red planet'",
    )
    p.add_argument("--query", "-q", action="append", required=True, help="a query (repeat for several)")
    p.add_argument(
        "--corpus",
        "-c",
        help="a .txt/.jsonl file (embedded with the document prompt) or a .npy from `encode` "
        "(default: the bundled demo corpus)",
    )
    p.add_argument("--texts", help="with a .npy corpus: the file it was encoded from, to print the texts")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("-k", type=positive_int, default=10, help="results per query (default: 10)")
    p.add_argument(
        "--precision",
        choices=("float32", *BINARY_PRECISIONS),
        default="float32",
        help="the corpus embeddings' precision: binary/ubinary (from encode --precision; a text corpus is "
        "quantized to it) are searched by Hamming distance and the candidates rescored with the float query "
        "(default: float32, cosine)",
    )
    p.add_argument(
        "--rescore-multiplier",
        type=positive_int,
        default=4,
        metavar="M",
        help="binary/ubinary: rescore the k x M nearest by Hamming distance (default: 4)",
    )
    add_model_args(p)
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    source = Path(args.corpus) if args.corpus else bundled_corpus()
    if source.suffix == ".npy":
        records = read_records(args.texts, text_field=args.text_field) if args.texts else None
        corpus_emb = load_embeddings(source, rows=len(records) if records else None, precision=args.precision)
        model = load_model(args)
    else:
        records = read_records(source, text_field=args.text_field)
        model = load_model(args)
        # a text corpus is embedded here and searched at the requested precision, e.g. to compare with float32
        corpus_emb = model.encode_document([r.text for r in records], batch_size=args.batch_size)
        corpus_emb = quantize_embeddings(corpus_emb, args.precision)
    results = search(
        model, args.query, corpus_emb, args.k, precision=args.precision, rescore_multiplier=args.rescore_multiplier
    )
    for query, hits in zip(args.query, results, strict=True):
        print(query)
        for rank, (row, score) in enumerate(hits, start=1):
            label = f"{records[row].id}  {clip(records[row].text)}" if records else f"row {row}"
            print(f"{rank:4d}  {score:.3f}  {label}")
