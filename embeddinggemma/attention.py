"""Bidirectional attention with an optional sliding window, behind one function.

`attention(q, k, v, valid, radius=..., scale=..., impl=...)` is the only entry point the model uses.
q is (B, T, N, H), k and v are (B, T, K, H) with N a multiple of K (grouped queries), `valid` (B, T)
marks real tokens. A query at i sees key j iff j is a real token and, in sliding layers, |i - j| <=
radius. Masked logits get a large finite negative value, so a row with no visible key (a padding row
of a padded batch) yields finite output instead of NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30  # finite: softmax over an all-masked row is uniform, not NaN
IMPLEMENTATIONS = ("auto", "dense")


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *, radius: int | None, scale: float, impl: str
) -> jax.Array:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose from {IMPLEMENTATIONS}")
    return dense_attention(q, k, v, valid, radius=radius, scale=scale)


def dense_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *, radius: int | None, scale: float
) -> jax.Array:
    """Reference implementation: full T x T logits, float32 softmax."""
    b, t, n, h = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, n // kv, h)
    logits = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    mask = valid[:, None, None, None, :]
    if radius is not None:
        pos = jnp.arange(t)
        mask = mask & (jnp.abs(pos[:, None] - pos[None, :]) <= radius)
    probs = jax.nn.softmax(jnp.where(mask, logits, MASK_VALUE), axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, h)
