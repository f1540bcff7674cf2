"""Compiling: XLA compiler options for the model's jitted functions (by target platform and compute dtype),
and JAX's persistent compilation cache, which lets a later process load a program instead of compiling it.

Does this CPU want the options? `python scripts/cpu_matmul_options.py` (`bench.cpu_options`) times the
model's matmul shapes and one encoder block with XLA's defaults and with YNNPACK off.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from embeddinggemma.files import cache_dir

# XLA:CPU (jaxlib 0.10) hands dots to YNNPACK by default. On the AVX-512 CPUs we measured, XLA's own GEMM
# (Eigen) is faster in float32 and YNNPACK much faster in bfloat16 (figures: docs/benchmarks.md).
NO_YNNPACK = (("xla_cpu_experimental_ynn_fusion_type", ""),)  # "": no YNNPACK fusions


def compiler_options(platform: str, dtype: DTypeLike) -> dict[str, str] | None:
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


def default_cache_dir() -> Path:
    """$EMBEDDINGGEMMA_COMPILATION_CACHE, else embeddinggemma/jax under the user's cache directory."""
    return cache_dir("jax", "EMBEDDINGGEMMA_COMPILATION_CACHE")


def enable_compilation_cache(directory: Path) -> None:
    """JAX's persistent compilation cache in `directory`: every compiled program is written there and a
    later process with the same program, jax version and devices loads it instead of compiling."""
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
