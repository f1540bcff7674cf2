"""XLA compiler options for the model's jitted functions, by target platform and compute dtype.

Does this CPU want them? `JAX_PLATFORMS=cpu python -m embeddinggemma.compile_options [--tokens 7680]`
times the model's matmul shapes and one encoder block with XLA's defaults and with YNNPACK off, in float32
and bfloat16, and says which one `compiler_options("cpu", dtype)` picks.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from embeddinggemma.config import SLIDING, ModelConfig
from embeddinggemma.model import Block, matmul

# XLA:CPU (jaxlib 0.10) hands dots to YNNPACK by default. On a 2-core AVX-512 AMD EPYC
# (`python -m embeddinggemma.compile_options`): in float32 XLA's own GEMM (Eigen) is faster, (7680 x 768) @
# (768 x 1152) 184 vs 150 GFLOP/s, one sliding block at 4 x 1920 tokens 517 vs 644 ms; in bfloat16
# YNNPACK is much faster (254 vs 160 GFLOP/s; 333 vs 523 ms).
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


def _seconds(fn, *args, options: dict | None, repeats: int) -> float:
    """Median wall time of jax.jit(fn, compiler_options=options)(*args) after one compiling call."""
    jitted = jax.jit(fn, compiler_options=options)
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Print the table of matmul GFLOP/s and block times under both settings."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=7680, help="rows of each matmul (batch x length), e.g. 4 x 1920")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    cfg, rng = ModelConfig(), np.random.default_rng(0)
    d, f, t = cfg.hidden_size, cfg.intermediate_size, args.tokens
    print(f"{jax.devices()[0].device_kind}, {t} tokens; median of {args.repeats}")
    if not accepted(NO_YNNPACK):
        print("this XLA has no YNNPACK option: compiler_options leaves every dtype on XLA's defaults")
        return 0
    print("| dtype | op | XLA defaults (YNNPACK) | YNNPACK off | compiler_options |\n|---|---|---|---|---|")
    for dtype in (jnp.float32, jnp.bfloat16):
        both = (None, dict(NO_YNNPACK))
        name = jnp.dtype(dtype).name
        picked = "YNNPACK off" if compiler_options("cpu", dtype) else "defaults"
        product = functools.partial(matmul, "tk,kn->tn", dtype=dtype)
        for k, n in ((d, cfg.num_heads * cfg.head_dim), (d, f), (f, d)):
            x, w = (jnp.asarray(rng.standard_normal(shape), dtype) for shape in ((t, k), (k, n)))
            gflops = [2 * t * k * n / 1e9 / _seconds(product, x, w, options=o, repeats=args.repeats) for o in both]
            print(
                f"| {name} | ({t} x {k}) @ ({k} x {n}) | {gflops[0]:.0f} GFLOP/s | {gflops[1]:.0f} GFLOP/s | {picked} |"
            )
        graphdef, state = nnx.split(Block(cfg, SLIDING, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
        h = jnp.asarray(rng.standard_normal((4, t // 4, d)), dtype)
        block = functools.partial(_block, graphdef)
        ms = [1e3 * _seconds(block, state, h, options=o, repeats=args.repeats) for o in both]
        print(f"| {name} | sliding block, 4 x {t // 4} | {ms[0]:.0f} ms | {ms[1]:.0f} ms | {picked} |")
    return 0


def _block(graphdef: nnx.GraphDef, state: nnx.State, h: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(h, jnp.ones(h.shape[:2], bool), "blocked")


if __name__ == "__main__":
    raise SystemExit(main())
