"""Embed the bundled corpus and answer a few queries: the README's first command.

The checkpoint is $EMBEDDINGGEMMA_CHECKPOINT (a local directory) or the Hub id google/embeddinggemma-300m.

    python scripts/demo.py ["your query" ...]
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib import resources

from embeddinggemma import CheckpointError, EmbeddingGemma

QUERIES = ["Which planet is known as the Red Planet?", "How do I compile a function for TPU?", "capital of Germany"]


def main(argv: list[str]) -> int:
    source = os.environ.get("EMBEDDINGGEMMA_CHECKPOINT") or "google/embeddinggemma-300m"
    try:
        model = EmbeddingGemma.from_pretrained(source)
    except CheckpointError as e:
        print(f"no weights: {e}", file=sys.stderr)
        return 1
    lines = resources.files("embeddinggemma").joinpath("data/corpus.jsonl").read_text(encoding="utf-8").splitlines()
    corpus = [json.loads(line) for line in lines]
    t0 = time.perf_counter()
    docs = model.encode_document([d["text"] for d in corpus], titles=[d["title"] for d in corpus])
    print(f"embedded {len(corpus)} documents in {time.perf_counter() - t0:.1f}s (includes compilation)")
    queries = argv or QUERIES
    scores = model.similarity(model.encode_query(queries), docs)
    for query, row in zip(queries, scores, strict=True):
        print(f"\n{query}")
        for i in row.argsort()[::-1][:3]:
            print(f"  {row[i]:.3f}  {corpus[i]['title']}: {corpus[i]['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
