"""mixed.einsum: float32 accumulation forward, and a backward whose dots run in the operands' dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embeddinggemma.model import mixed

SPECS = ("btd,dnh->btnh", "btnh,nhd->btd", "bkgts,bskh->btkgh", "bi,io->bo")


def _operands(spec: str, dtype, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    sizes = dict(zip("btdnhkgsio", (2, 5, 8, 3, 4, 2, 3, 5, 6, 7), strict=True))
    a_spec, b_spec = spec.split("->")[0].split(",")
    ka, kb = jax.random.split(jax.random.key(seed))
    a = jax.random.normal(ka, tuple(sizes[c] for c in a_spec), jnp.float32)
    b = jax.random.normal(kb, tuple(sizes[c] for c in b_spec), jnp.float32)
    return a.astype(dtype), b.astype(dtype)


def _loss(einsum, spec: str):
    def loss(a: jax.Array, b: jax.Array) -> jax.Array:
        out = einsum(spec, a, b)
        return (out.astype(jnp.float32) * jnp.cos(jnp.arange(out.size).reshape(out.shape))).sum()

    return loss


def _dots(jaxpr) -> list:
    """Every dot_general of a jaxpr, inside nested ones (jit, custom_vjp) too."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                found += _dots(inner)
    return found


@pytest.mark.parametrize("spec", SPECS)
def test_float32_is_jax_einsum_exactly(spec: str) -> None:
    a, b = _operands(spec, jnp.float32)
    ours = jax.grad(_loss(mixed.einsum, spec), argnums=(0, 1))(a, b)
    plain = jax.grad(_loss(lambda s, x, y: jnp.einsum(s, x, y, preferred_element_type=jnp.float32), spec), (0, 1))(a, b)
    for x, y in zip(ours, plain, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("spec", SPECS)
def test_bfloat16_gradients_are_bfloat16_dots_within_bfloat16_rounding(spec: str) -> None:
    """Every dot of the gradient takes bfloat16 operands (JAX's own rule gives float32 x bfloat16 ones), and
    the gradients are the float32 ones to within bfloat16's rounding of the cotangent and of the result."""
    a, b = _operands(spec, jnp.bfloat16)
    loss = _loss(mixed.einsum, spec)
    out = mixed.einsum(spec, a, b)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(jnp.einsum(spec, a, b, preferred_element_type=jnp.float32))
    )

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(a, b)
    dots = _dots(jaxpr.jaxpr)
    assert len(dots) == 3  # the forward and the two gradients
    assert all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)

    da, db = jax.grad(loss, argnums=(0, 1))(a, b)
    assert da.dtype == db.dtype == jnp.bfloat16
    exact = jax.grad(_loss(mixed.einsum, spec), argnums=(0, 1))(a.astype(jnp.float32), b.astype(jnp.float32))
    for ours, want in zip((da, db), exact, strict=True):
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(ours, np.float32), want, rtol=0, atol=2e-2 * np.abs(want).max())


def test_bad_operands_are_refused_by_name() -> None:
    a, b = _operands("bi,io->bo", jnp.bfloat16)
    with pytest.raises(TypeError, match="two dtypes"):
        mixed.einsum("bi,io->bo", a, b.astype(jnp.float32))
    with pytest.raises(ValueError, match="index x is in only one operand"):
        jax.grad(lambda x, y: mixed.einsum("bix,io->bo", x, y).sum())(a[..., None], b)
