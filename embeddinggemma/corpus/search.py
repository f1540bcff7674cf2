"""Top-k semantic search of saved embeddings: float32 by cosine, binary / ubinary by Hamming distance with
the candidates rescored by the float query (`encode.precision.binary_search`)."""

from __future__ import annotations

import numpy as np

from embeddinggemma.encode import vectors
from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.encode.precision import BINARY_PRECISIONS, Precision, binary_search, check_precision
from embeddinggemma.errors import InputError


def search(
    model: EmbeddingGemma,
    queries: list[str],
    corpus_emb: np.ndarray,
    k: int,
    *,
    precision: Precision = "float32",
    rescore_multiplier: int = 4,
) -> list[list[tuple[int, float]]]:
    """(row, score) of the k best corpus rows for each query, best first.

    Queries get the "query" prompt and are truncated to the corpus embeddings' width (Matryoshka), so
    embeddings saved with `--truncate-dim` are searched at that width. Scores are cosines for a float32
    corpus; for a binary/ubinary one they are `binary_search`'s rescored dot products of the
    float query with the k x `rescore_multiplier` rows nearest in Hamming distance.
    """
    check_precision(precision, ("float32", *BINARY_PRECISIONS))
    full = model.config.embedding_dim
    width = corpus_emb.shape[1] * 8 if precision in BINARY_PRECISIONS else corpus_emb.shape[1]
    if width > full:
        raise InputError(f"the corpus embeddings are {width}-d but this model gives {full}-d embeddings")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if precision in BINARY_PRECISIONS:
        query_emb = model.encode_query(queries, truncate_dim=width)
        best, best_scores = binary_search(
            query_emb, corpus_emb, precision, top_k=k, rescore_multiplier=rescore_multiplier
        )
        return [list(zip(map(int, i), map(float, s), strict=True)) for i, s in zip(best, best_scores, strict=True)]
    scores = model.similarity(model.encode_query(queries, truncate_dim=width), corpus_emb)
    best, best_scores = vectors.top_k(scores, k)
    return [list(zip(map(int, i), map(float, s), strict=True)) for i, s in zip(best, best_scores, strict=True)]
