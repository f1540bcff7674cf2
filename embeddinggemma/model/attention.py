"""Bidirectional attention with an optional sliding window, behind one function and several backends.

`attention(q, k, v, valid, radius=..., scale=..., impl=...)` is the only entry point the model uses.
q is (B, T, N, H), k and v are (B, T, K, H) with N a multiple of K (grouped queries), `valid` (B, T)
marks real tokens. A query at i sees key j iff j is a real token and, in sliding layers, |i - j| <=
radius. Masked logits get a large finite negative value, so a row with no visible key (a padding row
of a padded batch) yields finite output instead of NaN. Rows of padding queries are unspecified
(finite) and differ between backends; callers ignore them (pooling excludes padding).

Backends (`impl`):

* "dense"    - the reference: full T x T logits, float32 softmax. Cost grows with T^2 for every layer.
* "blocked"  - sliding layers attend block by block: queries in blocks of C = radius / 2 see only the
               5 key blocks around them (5C = 2.5 * radius keys instead of T), so cost grows with
               T * radius. Global layers go one tile of 256 queries at a time ("tiled"), so a tile's
               logits stay in cache. Plain XLA: the CPU default, also runs on TPU/GPU.
* "dot_product" - jax.nn.dot_product_attention with `local_window_size`; cuDNN for global layers on GPU
               in bfloat16 (cuDNN refuses a bidirectional window), XLA otherwise. The GPU default for
               global layers.
* "splash"   - Pallas splash attention (TPU): LocalMask(radius, radius) for sliding layers so masked-out
               key blocks are never loaded or computed, FullMask for global layers, padding as segment
               ids. Inside shard_map over the batch axes of the mesh set by `jax.set_mesh`. The TPU default.
* "splash_interpret" - the same kernel run by the Pallas interpreter, for checking it on CPU.
* "auto"     - by platform: tpu -> splash; gpu -> blocked for sliding layers, dot_product (cuDNN) for
               global ones; otherwise blocked.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from embeddinggemma.model import mixed
from embeddinggemma.sharding import BATCH_AXES

AttentionImpl = Literal["auto", "dense", "blocked", "dot_product", "splash", "splash_interpret"]
IMPLEMENTATIONS: tuple[AttentionImpl, ...] = get_args(AttentionImpl)
MASK_VALUE = -1e30  # finite: softmax over an all-masked row is uniform, not NaN
SPLASH_ALIGN = 128  # splash with segment ids needs sequence blocks that are multiples of 128
# Splash tile sizes (queries = keys per tile). Sliding layers: small tiles hug the band, ~5 x 128 = 640 keys
# read per query for the 2 * 256 + 1 it needs. Global layers: larger tiles for fewer grid steps.
SPLASH_BLOCK_SLIDING = 128
SPLASH_BLOCK_GLOBAL = 512


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    *,
    radius: int | None,
    scale: float,
    impl: AttentionImpl,
) -> jax.Array:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose from {IMPLEMENTATIONS}")
    backend = backend_for(impl, radius)
    with jax.named_scope(f"{backend}_attention"):
        if backend == "dense":
            return dense_attention(q, k, v, valid, radius=radius, scale=scale)
        if backend == "blocked":
            return blocked_attention(q, k, v, valid, radius=radius, scale=scale)
        if backend == "dot_product":
            return dot_product_attention(q, k, v, valid, radius=radius, scale=scale)
        return splash_attention(q, k, v, valid, radius=radius, scale=scale, interpret=backend == "splash_interpret")


def backend_for(impl: AttentionImpl, radius: int | None) -> AttentionImpl:
    """ "auto" -> the backend for the platform being traced for and the layer's kind. On GPU, sliding
    layers go blocked (XLA would compute the whole masked square; blocked was faster end to end with half
    the memory on an H200, docs/benchmarks.md) and global layers go to cuDNN."""
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "tpu":
        return "splash"
    if backend == "gpu" and radius is None:
        return "dot_product"
    return "blocked"


def dense_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *, radius: int | None, scale: float
) -> jax.Array:
    """Reference implementation: full T x T logits, float32 softmax."""
    b, t, n, h = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, n // kv, h)
    logits = mixed.einsum("btkgh,bskh->bkgts", qg, k) * scale
    mask = valid[:, None, None, None, :]
    if radius is not None:
        pos = jnp.arange(t)
        mask = mask & (jnp.abs(pos[:, None] - pos[None, :]) <= radius)
    probs = jax.nn.softmax(jnp.where(mask, logits, MASK_VALUE), axis=-1).astype(v.dtype)
    out = mixed.einsum("bkgts,bskh->btkgh", probs, v).astype(v.dtype)
    return out.reshape(b, t, n, h)


BLOCKS_PER_RADIUS = 2  # query block C = radius / 2: each block reads 2 * 2 + 1 = 5 key blocks


def blocked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *, radius: int | None, scale: float
) -> jax.Array:
    """Sliding-window attention computed only near the diagonal; global layers go to `tiled_attention`.

    Queries are cut into blocks of C tokens; block i needs keys from i*C - radius to (i+1)*C + radius,
    i.e. key blocks i-m .. i+m with m = ceil(radius / C). Keys are padded by m*C on both sides, and
    the 2m+1 shifted copies are stacked, so every block holds a ((2m+1)C keys, C queries) logits tile.
    """
    b, t, n, h = q.shape
    if radius is None:
        return tiled_attention(q, k, v, valid, scale=scale)
    c = max(1, math.ceil(radius / BLOCKS_PER_RADIUS))
    m = math.ceil(radius / c)
    width = (2 * m + 1) * c
    if width >= t:
        return dense_attention(q, k, v, valid, radius=radius, scale=scale)
    kv = k.shape[2]
    nb = -(-t // c)
    t_padded = nb * c
    pad = lambda x, lo, hi: jnp.pad(x, ((0, 0), (lo, hi)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
    qb = pad(q, 0, t_padded - t).reshape(b, nb, c, kv, n // kv, h)

    def windows(x: jax.Array) -> jax.Array:  # (B, T, ...) -> (B, nb, (2m+1)C, ...)
        xb = pad(x, m * c, t_padded - t + m * c).reshape(b, nb + 2 * m, c, *x.shape[2:])
        stacked = jnp.stack([xb[:, j : j + nb] for j in range(2 * m + 1)], axis=2)
        return stacked.reshape(b, nb, width, *x.shape[2:])

    kw, vw, valid_w = windows(k), windows(v), windows(valid)
    # Logits laid out (keys W, queries C): XLA:CPU runs this batched K Q^T faster than Q K^T (same
    # FLOPs); the softmax then reduces over axis -2, and it is normalized after the PV product.
    logits = mixed.einsum("bnckgh,bnwkh->bnkgwc", qb, kw) * scale
    kpos = np.arange(nb)[:, None, None] * c - m * c + np.arange(width)[None, :, None]
    qpos = np.arange(nb)[:, None, None] * c + np.arange(c)[None, None, :]
    band = jnp.asarray(np.abs(qpos - kpos) <= radius)  # (nb, W, C), static
    mask = band[None, :, None, None] & valid_w[:, :, None, None, :, None]
    logits = jnp.where(mask, logits, MASK_VALUE)
    e = jnp.exp(logits - logits.max(axis=-2, keepdims=True))
    out = mixed.einsum("bnkgwc,bnwkh->bnckgh", e.astype(v.dtype), vw)
    denominator = jnp.moveaxis(e.sum(axis=-2), -1, 2)[..., None]  # (B, nb, K, G, C) -> (B, nb, C, K, G, 1)
    return (out / denominator).astype(v.dtype).reshape(b, t_padded, n, h)[:, :t]


QUERY_TILE = 256  # global layers on CPU: (256 x 3 heads) x T float32 logits fit in L2/L3 up to T ~ 2048


def tiled_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *, scale: float) -> jax.Array:
    """Global (unwindowed) attention one tile of queries at a time under lax.map.

    Same math as `dense_attention`; the softmax denominator is applied after the PV product (one
    division per output element instead of per logit). Materializing all T x T logits and passing over
    them three times is memory-bound on CPU: at T = 2048 this runs about twice as fast.
    """
    b, t, n, h = q.shape
    kv, c = k.shape[2], QUERY_TILE
    if t <= c:
        return dense_attention(q, k, v, valid, radius=None, scale=scale)
    g, nb = n // kv, -(-t // c)
    qp = jnp.pad(q, ((0, 0), (0, nb * c - t), (0, 0), (0, 0)))  # padded queries are sliced off below
    tiles = qp.reshape(b, nb, c, kv, g, h).transpose(1, 0, 3, 2, 4, 5).reshape(nb, b, kv, c * g, h)
    kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # (B, K, T, H)
    mask = valid[:, None, None, :]

    def one(x: jax.Array) -> jax.Array:  # (B, K, C*G, H) -> same
        logits = mixed.einsum("bkmh,bksh->bkms", x, kt) * scale
        logits = jnp.where(mask, logits, MASK_VALUE)
        e = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
        out = mixed.einsum("bkms,bksh->bkmh", e.astype(v.dtype), vt)
        return (out / e.sum(axis=-1, keepdims=True)).astype(v.dtype)

    out = jax.lax.map(one, tiles).reshape(nb, b, kv, c, g, h).transpose(1, 0, 3, 2, 4, 5)
    return out.reshape(b, nb * c, n, h)[:, :t]


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *, radius: int | None, scale: float
) -> jax.Array:
    """jax.nn.dot_product_attention; cuDNN only where it applies (GPU, 16-bit, no window)."""
    cudnn = jax.default_backend() == "gpu" and q.dtype == jnp.bfloat16 and radius is None
    if cudnn:  # cuDNN takes padding as lengths (right padding, as the tokenizer produces)
        lengths = valid.sum(axis=-1, dtype=jnp.int32)
        return jax.nn.dot_product_attention(
            q, k, v, scale=scale, query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation="cudnn"
        )
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=valid[:, None, None, :],
        scale=scale,
        local_window_size=None if radius is None else (radius, radius),
        implementation="xla",
    )


@functools.lru_cache(maxsize=64)
def _splash_kernel(t: int, num_heads: int, radius: int | None, interpret: bool):
    """The static block-sparse kernel for one (length, window). Built under ensure_compile_time_eval
    so its mask tables are concrete even when first requested inside a jit trace (the cache must not
    hold tracers)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    with jax.ensure_compile_time_eval():
        if radius is None:
            mask, block = sa.FullMask((t, t)), min(SPLASH_BLOCK_GLOBAL, t)
        else:
            mask, block = sa.LocalMask((t, t), window_size=(radius, radius), offset=0), min(SPLASH_BLOCK_SLIDING, t)
        sizes = sa.BlockSizes(
            block_q=block,
            block_kv=block,
            block_kv_compute=block,
            block_q_dkv=block,
            block_kv_dkv=block,
            block_kv_dkv_compute=block,
            block_q_dq=block,
            block_kv_dq=block,
        )
        return sa.make_splash_mqa(
            sa.MultiHeadMask([mask] * num_heads), block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    *,
    radius: int | None,
    scale: float,
    interpret: bool = False,
) -> jax.Array:
    """Splash attention, one MQA kernel call per KV head, sharded over the batch axes of the mesh."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    _, t, n, h = q.shape
    kv = k.shape[2]
    t_padded = -(-t // SPLASH_ALIGN) * SPLASH_ALIGN
    if t_padded != t:  # padded tokens are invalid: they form their own segment and are sliced off
        pad = lambda x: jnp.pad(x, ((0, 0), (0, t_padded - t)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
        q, k, v, valid = pad(q), pad(k), pad(v), pad(valid)
    kernel = _splash_kernel(t_padded, n // kv, radius, interpret)

    def local(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array) -> jax.Array:
        seg = valid.astype(jnp.int32)  # real tokens segment 1, padding segment 0
        segments = sa.SegmentIds(q=seg, kv=seg)
        qh = (q * jnp.asarray(scale, q.dtype)).reshape(q.shape[0], t_padded, kv, n // kv, h)
        heads = [
            jax.vmap(kernel)(jnp.moveaxis(qh[:, :, i], 1, 2), k[:, :, i], v[:, :, i], segments) for i in range(kv)
        ]  # each (B, N/K, T, H)
        return jnp.moveaxis(jnp.stack(heads, axis=1), 3, 1).reshape(q.shape[0], t_padded, n, h)

    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in BATCH_AXES if not mesh.empty and a in mesh.axis_names)
    if axes:
        spec = PartitionSpec(axes)
        local = jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec, check_vma=False)
    return local(q, k, v, valid)[:, :t]
