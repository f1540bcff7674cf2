"""Compile time, layers scanned vs unrolled, in one run: trace + lower and compile wall time of the programs
users wait for (`embeddinggemma benchmark-compile`).

Rows: the encode step at (8, 64), (32, 512) and (8, 2048) tokens; the same model stretched to twice its
depth (does compile time grow with the layers?); the train step, plain and with GradCache; every shape the
server compiles before /health turns 200 (`serve.batcher.batch_shapes`, this platform's defaults); and,
with the TPU compiler (the `tpu` extra), the v5e AOT encode and train steps of `bench.aot`. Parameters are
abstract (shapes and dtypes from the checkpoint's config; no weights are read), each program is traced,
lowered and compiled afresh (`jax.clear_caches()` first; no persistent cache), and the two layouts alternate
so both see the same machine state.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from embeddinggemma import sharding
from embeddinggemma.bench import aot
from embeddinggemma.encode.encoder import build_encode_step
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.model.modeling import EmbeddingGemmaModule
from embeddinggemma.serve.batcher import batch_shapes, platform_batching
from embeddinggemma.train.config import TrainConfig
from embeddinggemma.train.step import abstract_batch, build_train_step

ENCODE_SHAPES = ((8, 64), (32, 512), (8, 2048))
TRAIN_BATCH, TRAIN_TOKENS, GRAD_CACHE = 16, 64, 8  # benchmark-train's defaults; GradCache in chunks of 8


@dataclasses.dataclass(frozen=True)
class Row:
    program: str
    shape: str
    unrolled: tuple[float, float]  # (trace + lower, compile) seconds
    scanned: tuple[float, float]

    def line(self) -> str:
        total = lambda t: sum(t)  # noqa: E731
        return (
            f"| {self.program} | {self.shape} | {self.unrolled[0]:.2f} + {self.unrolled[1]:.2f} = "
            f"{total(self.unrolled):.2f} | {self.scanned[0]:.2f} + {self.scanned[1]:.2f} = {total(self.scanned):.2f} | "
            f"{total(self.unrolled) / total(self.scanned):.1f}x |"
        )


HEADER = (
    "| program | shape | unrolled s (lower + compile) | scanned s (lower + compile) | unrolled / scanned |\n"
    "|---|---|---|---|---|"
)


def _timed(lower: Callable[[], jax.stages.Lowered]) -> tuple[float, float]:
    """(trace + lower, compile) seconds of one program, compiled afresh."""
    jax.clear_caches()
    t0 = time.perf_counter()
    lowered = lower()
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def _abstract(tree: nnx.State) -> nnx.State:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def lower_encode(cfg: ModelConfig, rows: int, length: int, *, dtype: str, scan_layers: bool) -> jax.stages.Lowered:
    """The encode step `EmbeddingGemma.encode` runs on one (rows, length) batch on the default device."""
    module = EmbeddingGemmaModule.abstract(cfg, dtype=dtype, param_dtype=dtype, scan_layers=scan_layers)
    graphdef, params = nnx.split(module)
    ids, valid = (jax.ShapeDtypeStruct((rows, length), d) for d in (jnp.int32, jnp.bool_))
    return build_encode_step(graphdef, None, dtype).lower(_abstract(params), ids, valid)


def lower_train(cfg: ModelConfig, *, dtype: str, grad_cache: int | None, scan_layers: bool) -> jax.stages.Lowered:
    """The train step `train` runs on one batch of benchmark-train's size, on one device."""
    train_cfg = TrainConfig(
        model="-",
        train_file="-",
        output_dir="-",
        num_negatives=1,
        global_batch_size=TRAIN_BATCH,
        grad_cache_chunk=grad_cache,
        compute_dtype=dtype,
        scan_layers=scan_layers,
    )
    mesh = sharding.make_mesh("data=1", jax.devices()[:1])
    step = build_train_step(train_cfg, cfg, mesh, total_steps=100)
    batch = abstract_batch(TRAIN_BATCH, 1, TRAIN_TOKENS, TRAIN_TOKENS)
    with jax.set_mesh(mesh):
        return step.fn.lower(step.abstract_state, step.abstract_frozen, batch)


def deeper(cfg: ModelConfig, factor: int = 2) -> ModelConfig:
    """The same model with its layer pattern repeated `factor` times as often."""
    return dataclasses.replace(cfg, num_layers=cfg.num_layers * factor, layer_types=cfg.layer_types * factor)


PROGRAMS = ("encode", "depth", "train", "serve")


def rows(
    cfg: ModelConfig,
    *,
    programs: tuple[str, ...] = PROGRAMS,
    dtype: str = "float32",
    serve_length: int = 512,
    tpu: str | None = None,
) -> Iterator[Row]:
    """Each row of `programs` as soon as both layouts are compiled. `serve_length`: the server's
    --max-input-tokens. `tpu`: a topology such as "v5e:2x4" for the AOT rows (needs the tpu extra)."""
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise ValueError(f"unknown programs {unknown}; choose from {', '.join(PROGRAMS)}")

    def both(program: str, shape: str, lower: Callable[[bool], jax.stages.Lowered]) -> Row:
        unrolled = _timed(lambda: lower(False))
        scanned = _timed(lambda: lower(True))
        return Row(program, shape, unrolled, scanned)

    def encode(model: ModelConfig, b: int, t: int) -> Callable[[bool], jax.stages.Lowered]:
        return lambda scan: lower_encode(model, b, t, dtype=dtype, scan_layers=scan)

    for b, t in ENCODE_SHAPES if "encode" in programs else ():
        t = min(t, cfg.max_seq_length)
        yield both("encode", f"{b} x {t}", encode(cfg, b, t))
    if "depth" in programs:
        twice, (b, t) = deeper(cfg), ENCODE_SHAPES[0]
        yield both(f"encode, {twice.num_layers} layers", f"{b} x {t}", encode(twice, b, t))
    for chunk in (None, GRAD_CACHE) if "train" in programs else ():
        name = "train step" + (f", GradCache {chunk}" if chunk else "")
        shape = f"{TRAIN_BATCH} pairs x {TRAIN_TOKENS}"
        yield both(
            name, shape, lambda scan, chunk=chunk: lower_train(cfg, dtype=dtype, grad_cache=chunk, scan_layers=scan)
        )

    if "serve" in programs:
        budget, row_step = platform_batching(jax.devices()[0].platform)
        longest = min(serve_length, cfg.max_seq_length)
        shapes = [(r, n) for n, counts in batch_shapes(cfg.max_seq_length, longest, budget, 256, 1, row_step).items()
                  for r in counts]  # fmt: skip

        def warm_up(scan: bool) -> tuple[float, float]:
            times = [_timed(lambda r=r, n=n: encode(cfg, r, n)(scan)) for r, n in shapes]
            return sum(t[0] for t in times), sum(t[1] for t in times)

        yield Row("serve warm-up", f"{len(shapes)} shapes <= {longest} tokens", warm_up(False), warm_up(True))
    if tpu is None:
        return
    devices = aot.tpu_devices(tpu)
    for kind in aot.STEPS:
        mesh = sharding.make_mesh(aot.default_mesh(kind, len(devices)), devices)

        def compiled(scan: bool, kind: str = kind, mesh: jax.sharding.Mesh = mesh) -> tuple[float, float]:
            jax.clear_caches()
            if kind == "encode":
                report = aot.compile_encode(cfg, mesh, 4096, 512, "splash", scan_layers=scan)
            else:
                report = aot.compile_train(cfg, mesh, 1024, 512, "splash", "full", 256, scan_layers=scan)
            return 0.0, report.compile_s  # the report times lowering and compiling together

        shape = "4096 x 512" if kind == "encode" else "1024 pairs x 512, GradCache 256"
        yield Row(f"AOT {kind}, {tpu}", shape, compiled(False), compiled(True))
