"""Every attention backend against the dense reference, on sequences several windows long with padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embeddinggemma import sharding
from embeddinggemma.model import attention as A

BACKENDS = ("blocked", "dot_product", "splash_interpret")


def _inputs(batch: int, t: int, heads: int, kv_heads: int, head_dim: int, lengths: list[int]):
    rng = np.random.default_rng(t + heads)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, t, h, head_dim)), jnp.float32) for h in (heads, kv_heads, kv_heads))
    valid = jnp.asarray(np.arange(t)[None] < np.asarray(lengths)[:, None])
    return q, k, v, valid


def _max_diff_on_valid(out: jax.Array, ref: jax.Array, valid: jax.Array) -> float:
    mask = np.asarray(valid)[..., None, None]
    return float(np.where(mask, np.abs(np.asarray(out) - np.asarray(ref)), 0.0).max())


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize(
    ("t", "radius", "heads", "kv_heads"),
    [(256, 16, 3, 1), (200, 9, 3, 1), (300, 33, 4, 2), (192, None, 3, 1)],
)
def test_backend_matches_dense(impl: str, t: int, radius: int | None, heads: int, kv_heads: int):
    """Lengths: full, ragged (several windows), and a 3-token row; T not a multiple of the blocks."""
    q, k, v, valid = _inputs(3, t, heads, kv_heads, 32, [t, t - 37, 3])
    with jax.default_matmul_precision("highest"):
        ref = A.dense_attention(q, k, v, valid, radius=radius, scale=0.25)
        out = jax.jit(lambda *x: A.attention(*x, radius=radius, scale=0.25, impl=impl))(q, k, v, valid)
    assert out.shape == q.shape
    assert np.isfinite(np.asarray(out)).all()
    assert _max_diff_on_valid(out, ref, valid) <= 1e-5


@pytest.mark.parametrize(("t", "heads", "kv_heads"), [(600, 3, 1), (512, 4, 2)])
def test_tiled_global_attention_matches_dense(t: int, heads: int, kv_heads: int):
    """Global layers of the blocked backend: several query tiles, the last one partial when t = 600."""
    assert t > A.QUERY_TILE
    q, k, v, valid = _inputs(2, t, heads, kv_heads, 32, [t, t - 333])
    with jax.default_matmul_precision("highest"):
        ref = A.dense_attention(q, k, v, valid, radius=None, scale=0.25)
        out = jax.jit(lambda *x: A.attention(*x, radius=None, scale=0.25, impl="blocked"))(q, k, v, valid)
    assert out.shape == q.shape
    assert _max_diff_on_valid(out, ref, valid) <= 1e-5


def test_window_edge_is_exact():
    """A key at distance radius is seen, radius + 1 is not: only the blocked band decides this."""
    t, radius = 64, 8
    q = jnp.zeros((1, t, 1, 4))  # uniform attention: output = mean of visible v
    v = jnp.arange(t, dtype=jnp.float32)[None, :, None, None] * jnp.ones((1, t, 1, 4))
    valid = jnp.ones((1, t), bool)
    out = A.blocked_attention(q, q, v, valid, radius=radius, scale=1.0)[0, :, 0, 0]
    i = np.arange(t)
    expected = [np.mean(np.arange(max(0, x - radius), min(t, x + radius + 1))) for x in i]
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)


def test_blocked_cost_is_linear_in_length():
    """The compiled blocked sliding layer's FLOPs grow with T * window, dense's with T^2."""

    def flops(impl: str, t: int) -> float:
        args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((1, t, 3, 64), (1, t, 1, 64), (1, t, 1, 64))]
        f = jax.jit(lambda q, k, v, m: A.attention(q, k, v, m, radius=32, scale=1.0, impl=impl))
        return f.lower(*args, jax.ShapeDtypeStruct((1, t), jnp.bool_)).compile().cost_analysis()["flops"]

    assert flops("blocked", 2048) / flops("blocked", 1024) < 2.1
    assert flops("dense", 2048) / flops("dense", 1024) > 3.5


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices")
def test_splash_inside_shard_map_on_a_mesh():
    mesh = sharding.make_mesh("data=2,fsdp=2", devices=jax.devices()[:4])
    q, k, v, valid = _inputs(4, 256, 3, 1, 32, [256, 100, 250, 7])
    with jax.default_matmul_precision("highest"):
        ref = A.dense_attention(q, k, v, valid, radius=20, scale=0.25)
        with jax.set_mesh(mesh):
            args = jax.device_put((q, k, v, valid), sharding.batch_sharding(mesh))
            out = jax.jit(lambda *x: A.attention(*x, radius=20, scale=0.25, impl="splash_interpret"))(*args)
    assert out.sharding.spec == sharding.batch_sharding(mesh).spec
    assert _max_diff_on_valid(out, ref, valid) <= 1e-5


def test_auto_picks_platform_backend():
    platform = jax.default_backend()
    assert A.backend_for("auto", None) == {"tpu": "splash", "gpu": "dot_product"}.get(platform, "blocked")
    assert A.backend_for("auto", 256) == {"tpu": "splash"}.get(platform, "blocked")
    with pytest.raises(ValueError, match="unknown attention"):
        A.attention(*_inputs(1, 8, 1, 1, 4, [8]), radius=None, scale=1.0, impl="flash")
