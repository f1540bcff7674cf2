"""Embedding arithmetic on the host (numpy): normalization, Matryoshka truncation, cosine similarity, top-k.

Inside compiled programs (the model's head, the losses) the same math runs on the device with
`model.l2_normalize` and `model.truncate`.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12  # as torch.nn.functional.normalize: a zero vector stays zero instead of becoming NaN


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """x / max(||x||, eps) along the last axis, in float32."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


def truncate(x: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka: the first `dim` coordinates, re-normalized."""
    return l2_normalize(np.asarray(x)[..., :dim])


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) cosine similarities; a 1-D input counts as one row."""
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    if a2.shape[-1] != b2.shape[-1]:
        raise ValueError(f"embedding widths differ: {a2.shape[-1]} vs {b2.shape[-1]}")
    return l2_normalize(a2) @ l2_normalize(b2).T


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the k highest scores of each row (k capped at the row length), best first."""
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((best, -np.take_along_axis(scores, best, axis=1)), axis=-1)  # equal scores: lower index first
    best = np.take_along_axis(best, order, axis=1)
    return best, np.take_along_axis(scores, best, axis=1)
