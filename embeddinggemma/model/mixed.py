"""Mixed-precision einsum: operands in the compute dtype, products accumulated in float32, and a backward that
runs at the compute dtype's rate too.

JAX differentiates `jnp.einsum(..., preferred_element_type=float32)` through its float32 output: the
cotangent is float32, so each backward dot has one float32 and one bfloat16 operand, and XLA computes it in
float32, at half of XLA:CPU's bfloat16 rate (and a fraction of an accelerator's). PyTorch's autocast runs its
backward matmuls in bfloat16. `einsum` here does the same: the cotangent is rounded to the operands' dtype,
then each gradient is a low-precision dot accumulated in float32 and rounded once to its operand's dtype.
Float32 operands take JAX's own rule (nothing to round).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, a, b)` accumulated and returned in float32; a and b share one dtype."""
    if a.dtype != b.dtype:
        raise TypeError(f"einsum {spec!r}: operands of two dtypes ({a.dtype}, {b.dtype}); cast them first")
    if a.dtype == jnp.float32:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    return _low_precision(spec, a, b)


def _gradient_specs(spec: str) -> tuple[str, str]:
    """The einsums of d a and d b from the output's cotangent: "A,B->C" gives "C,B->A" and "A,C->B"."""
    operands, out = spec.replace(" ", "").split("->")
    sa, sb = operands.split(",")
    for side, other in ((sa, sb), (sb, sa)):
        lost = set(side) - set(out) - set(other)
        if lost:  # an index summed within one operand: its gradient is a broadcast, not an einsum
            raise ValueError(f"einsum {spec!r}: index {''.join(sorted(lost))} is in only one operand")
    return f"{out},{sb}->{sa}", f"{sa},{out}->{sb}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_precision(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _forward(spec: str, a: jax.Array, b: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _low_precision(spec, a, b), (a, b)


def _backward(spec: str, residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    a, b = residuals
    spec_a, spec_b = _gradient_specs(spec)
    g = g.astype(a.dtype)
    da = jnp.einsum(spec_a, g, b, preferred_element_type=jnp.float32).astype(a.dtype)
    db = jnp.einsum(spec_b, a, g, preferred_element_type=jnp.float32).astype(b.dtype)
    return da, db


_low_precision.defvjp(_forward, _backward)
