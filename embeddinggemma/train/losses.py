"""Contrastive losses on sentence embeddings: pure functions, no model inside.

Shapes: `queries` (B, d) and `docs` (1 + k, B, d), where docs[0] are the positives and docs[1:] the
k hard-negative columns. Candidates are ordered like sentence-transformers' MultipleNegativesRankingLoss
(ST below): all positives, then every first negative, then every second negative, ...; query i's label
is candidate i. Under jax.jit with a batch sharded over devices these arrays are the *global* batch, so
every query is scored against every positive and hard negative on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from embeddinggemma.model.modeling import l2_normalize, truncate

MISSING = -1  # text key of an absent hard negative (example with fewer than k): never a candidate


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """(n, d) x (m, d) -> (n, m) cosine similarities (ST's cos_sim normalizes both sides)."""
    return jnp.einsum("nd,md->nm", l2_normalize(a), l2_normalize(b), precision=jax.lax.Precision.HIGHEST)


def info_nce(
    queries: jax.Array,
    docs: jax.Array,
    *,
    scale: float = 20.0,
    symmetric: bool = False,
    hardness_alpha: float = 0.0,
    query_keys: jax.Array | None = None,
    doc_keys: jax.Array | None = None,
) -> jax.Array:
    """Mean over queries of -log softmax(scale * cos(q_i, candidates))[own positive].

    `hardness_alpha` > 0 adds alpha * stopgrad(cos) to the logits of each query's *own* hard negatives,
    i.e. weights them by exp(alpha * sim) (EmbeddingGemma paper; ST hardness_mode="hard_negatives").
    `symmetric` averages the log-partition with the doc->query direction (ST directions=("query_to_doc",
    "doc_to_query"), partition_mode="per_direction").
    `query_keys` (B,) and `doc_keys` (1 + k, B) identify texts (equal key = same text): a candidate with
    the same text as the query's positive, other than the positive itself, is a false negative and is
    masked out, as is a missing negative (key MISSING); likewise duplicate queries in the symmetric term.
    """
    k1, b, d = docs.shape
    sim = cosine(queries, docs.reshape(k1 * b, d))  # (B, (1+k) B)
    logits = scale * sim
    own = jnp.tile(jnp.eye(b, dtype=bool), (1, k1))  # column j belongs to query j % B
    if hardness_alpha:
        own_negative = own & (jnp.arange(k1 * b) >= b)[None, :]
        logits = logits + jnp.where(own_negative, hardness_alpha * jax.lax.stop_gradient(sim), 0.0)
    if doc_keys is not None:
        keys = doc_keys.reshape(k1 * b)
        duplicate = (keys[None, :] == doc_keys[0][:, None]) & ~(own & (jnp.arange(k1 * b) < b)[None, :])
        logits = jnp.where(duplicate | (keys == MISSING)[None, :], -jnp.inf, logits)
    positive = jnp.diagonal(logits[:, :b])
    log_z = jax.nn.logsumexp(logits, axis=1)
    if symmetric:
        back = scale * sim[:, :b].T  # row i: positive i against every query
        if query_keys is not None:
            duplicate = (query_keys[None, :] == query_keys[:, None]) & ~jnp.eye(b, dtype=bool)
            back = jnp.where(duplicate, -jnp.inf, back)
        log_z = (log_z + jax.nn.logsumexp(back, axis=1)) / 2
    return jnp.mean(log_z - positive)


def matryoshka(
    queries: jax.Array,
    docs: jax.Array,
    *,
    dims: Sequence[int],
    weights: Sequence[float] | None = None,
    **info_nce_kwargs,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """sum_d w_d * info_nce(truncate(q, d), truncate(docs, d)) (ST MatryoshkaLoss); also each term."""
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if len(weights) != len(dims):
        raise ValueError(f"{len(dims)} Matryoshka dims but {len(weights)} weights")
    terms = {f"loss@{d}": info_nce(truncate(queries, d), truncate(docs, d), **info_nce_kwargs) for d in dims}
    total = sum(w * t for w, t in zip(weights, terms.values(), strict=True))
    return total, terms


def spread_out(x: jax.Array) -> jax.Array:
    """Global orthogonal regularizer (Zhang et al. 2017, used by EmbeddingGemma) over distinct rows.

    With s_ij = <x_i, x_j> for i != j on unit vectors: M1^2 + max(0, M2 - 1/d), M1 = mean s_ij,
    M2 = mean s_ij^2. Pushes random pairs towards the moments of uniformly spread points.
    """
    n, d = x.shape
    s = cosine(x, x)
    off = ~jnp.eye(n, dtype=bool)
    m1 = jnp.sum(jnp.where(off, s, 0.0)) / (n * (n - 1))
    m2 = jnp.sum(jnp.where(off, s * s, 0.0)) / (n * (n - 1))
    return m1**2 + jnp.maximum(m2 - 1.0 / d, 0.0)
