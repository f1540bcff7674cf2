"""Does this CPU want `encode.compilation.compiler_options`? The model's matmul shapes and one encoder block
timed with XLA's defaults and with YNNPACK off, in float32 and bfloat16, as a Markdown table
(`python scripts/cpu_matmul_options.py`; figures on docs/benchmarks.md)."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from embeddinggemma.encode.compilation import NO_YNNPACK, accepted, compiler_options
from embeddinggemma.model.config import SLIDING, ModelConfig
from embeddinggemma.model.modeling import Block, matmul


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


def _block(graphdef: nnx.GraphDef, state: nnx.State, h: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(h, jnp.ones(h.shape[:2], bool), "blocked")


def table(tokens: int = 7680, repeats: int = 7) -> Iterator[str]:
    """The lines of the table: matmul GFLOP/s and block times under both settings, and which one is picked."""
    cfg, rng = ModelConfig(), np.random.default_rng(0)
    d, f, t = cfg.hidden_size, cfg.intermediate_size, tokens
    yield f"{jax.devices()[0].device_kind}, {t} tokens; median of {repeats}"
    if not accepted(NO_YNNPACK):
        yield "this XLA has no YNNPACK option: compiler_options leaves every dtype on XLA's defaults"
        return
    yield "| dtype | op | XLA defaults (YNNPACK) | YNNPACK off | compiler_options |\n|---|---|---|---|---|"
    for dtype in (jnp.float32, jnp.bfloat16):
        both = (None, dict(NO_YNNPACK))
        name = jnp.dtype(dtype).name
        picked = "YNNPACK off" if compiler_options("cpu", dtype) else "defaults"
        product = functools.partial(matmul, "tk,kn->tn", dtype=dtype)
        for k, n in ((d, cfg.num_heads * cfg.head_dim), (d, f), (f, d)):
            x, w = (jnp.asarray(rng.standard_normal(shape), dtype) for shape in ((t, k), (k, n)))
            gflops = [2 * t * k * n / 1e9 / _seconds(product, x, w, options=o, repeats=repeats) for o in both]
            rates = " | ".join(f"{g:.0f} GFLOP/s" for g in gflops)
            yield f"| {name} | ({t} x {k}) @ ({k} x {n}) | {rates} | {picked} |"
        graphdef, state = nnx.split(Block(cfg, SLIDING, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
        h = jnp.asarray(rng.standard_normal((4, t // 4, d)), dtype)
        block = functools.partial(_block, graphdef)
        ms = [1e3 * _seconds(block, state, h, options=o, repeats=repeats) for o in both]
        yield f"| {name} | sliding block, 4 x {t // 4} | {ms[0]:.0f} ms | {ms[1]:.0f} ms | {picked} |"
