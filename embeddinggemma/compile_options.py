"""XLA compiler options for the model's jitted functions, by target platform and compute dtype."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# XLA:CPU (jaxlib 0.10) hands dots to YNNPACK by default. On a 2-core AVX-512 AMD EPYC
# (scripts/cpu_matmul_options.py): in float32 XLA's own GEMM (Eigen) is faster, (7680 x 768) @
# (768 x 1152) 184 vs 150 GFLOP/s, one sliding block at 4 x 1920 tokens 517 vs 644 ms; in bfloat16
# YNNPACK is much faster (254 vs 160 GFLOP/s; 333 vs 523 ms).
NO_YNNPACK = (("xla_cpu_experimental_ynn_fusion_type", ""),)  # "": no YNNPACK fusions


def compiler_options(platform: str, dtype) -> dict[str, str] | None:
    """Options for `jax.jit(..., compiler_options=...)`: YNNPACK off for float32 compute on CPU, XLA's
    defaults everywhere else, and also where this XLA does not know the option."""
    if platform != "cpu" or jnp.dtype(dtype) != jnp.float32 or not accepted(NO_YNNPACK):
        return None
    return dict(NO_YNNPACK)


@functools.cache
def accepted(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether XLA:CPU takes these options (an unknown one fails the compile, not the process)."""
    x = jax.device_put(jnp.zeros((), jnp.float32), jax.devices("cpu")[0])
    try:
        jax.jit(lambda y: y + 1, compiler_options=dict(options)).lower(x).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True
