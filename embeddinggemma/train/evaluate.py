"""Information-retrieval metrics on an eval set, at every Matryoshka dimension.

The eval input has the training format (any source of train/sources.py): each row's query is relevant
to its positive; the corpus is every distinct positive and negative (as prompted text). nDCG@10 uses
binary relevance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from embeddinggemma import vectors
from embeddinggemma.encoder import EmbeddingGemma
from embeddinggemma.train.data import Prompts
from embeddinggemma.train.sources import Example

RECALL_AT = (1, 10, 100)


@dataclasses.dataclass(frozen=True)
class EvalSet:
    queries: list[str]  # prompted
    corpus: list[str]  # prompted
    relevant: list[set[int]]  # corpus indices relevant to each query

    @classmethod
    def from_examples(cls, examples: Iterable[Example], prompts: Prompts) -> EvalSet:
        corpus: dict[str, int] = {}
        relevant: dict[str, set[int]] = {}
        for ex in examples:
            pos = corpus.setdefault(prompts.format_document(ex.positive, ex.title), len(corpus))
            for n in ex.negatives:
                corpus.setdefault(prompts.format_document(n), len(corpus))
            relevant.setdefault(prompts.format_query(ex.query), set()).add(pos)
        return cls(list(relevant), list(corpus), list(relevant.values()))


def retrieval_metrics(scores: np.ndarray, relevant: Sequence[set[int]]) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@{1,10,100} averaged over queries; scores is (queries, corpus)."""
    depth = min(max(RECALL_AT), scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    hits = np.array([[doc in rel for doc in row] for row, rel in zip(top, relevant, strict=True)], np.float64)
    n_rel = np.array([len(r) for r in relevant], np.float64)
    discount = 1.0 / np.log2(np.arange(2, 12))
    dcg = (hits[:, :10] * discount[: hits[:, :10].shape[1]]).sum(axis=1)
    idcg = np.array([discount[: int(min(n, 10))].sum() for n in n_rel])
    first = np.where(hits[:, :10].any(axis=1), hits[:, :10].argmax(axis=1) + 1, np.inf)
    out = {"ndcg@10": float(np.mean(dcg / idcg)), "mrr@10": float(np.mean(1.0 / first))}
    for k in RECALL_AT:
        out[f"recall@{k}"] = float(np.mean(hits[:, :k].sum(axis=1) / n_rel))
    return out


def evaluate(model: EmbeddingGemma, evalset: EvalSet, dims: Sequence[int], batch_size: int) -> dict[str, float]:
    """{"eval/{dim}/{metric}": value} for each Matryoshka dim (truncated and re-normalized)."""
    q = model.encode(evalset.queries, prompt="", batch_size=batch_size)
    c = model.encode(evalset.corpus, prompt="", batch_size=batch_size)
    out = {}
    for dim in dims:
        scores = vectors.truncate(q, dim) @ vectors.truncate(c, dim).T
        for name, value in retrieval_metrics(scores, evalset.relevant).items():
            out[f"eval/{dim}/{name}"] = value
    return out
