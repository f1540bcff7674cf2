"""`embeddinggemma aot`: compile the sharded encode and train steps for a TPU v5e slice, without a TPU,
and report per chip.

    pip install "embeddinggemma-jax[tpu]"
    JAX_PLATFORMS=cpu embeddinggemma aot --topology v5e:2x4

`jax.experimental.topologies` gives compile-only v5e devices; the real TPU compiler then reports
memory (memory_analysis) and FLOPs (cost_analysis) per chip. Compilation fails if a step does not fit
in HBM (15.75 GiB usable of 16 GiB on v5e). The programs are the ones users run: the encode step of
`encoder.build_encode_step` and the train step of `train.build_train_step`.

FLOPs: the splash kernel is a Mosaic custom call that XLA counts as 0 FLOPs, so its work is added
from the kernel's own block-sparsity (every 128 x 128 tile it visits; forward 2 matmuls, backward 7).
"compiled" = XLA's count + that kernel count. "analytic" = the model's matmul FLOPs with attention
counted only over the key pairs the mask allows (513 keys per query in sliding layers, fewer at the
edges); for training 3 x forward, plus 1 x forward when blocks are rematerialized (recompute is part
of the algorithm, not waste). The ratio therefore shows computed-but-masked attention and padding of
the kernel's tiles, nothing else. XLA's cost analysis counts the body of a loop once, so for a program
that loops (the scanned layers, the default, or GradCache's chunks) the table shows the analytic FLOPs
(marked "a") and no ratio; `scan_layers=False` compiles the unrolled program, whose count is complete.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from embeddinggemma import sharding
from embeddinggemma.encode.encoder import build_encode_step
from embeddinggemma.model import attention, quantized
from embeddinggemma.model.attention import AttentionImpl
from embeddinggemma.model.config import FULL, ModelConfig
from embeddinggemma.model.flops import forward_flops
from embeddinggemma.model.modeling import EmbeddingGemmaModule, RematPolicy

V5E_BF16_FLOPS = 197e12  # per chip
V5E_HBM_BYTES_PER_S = 819e9
V5E_HBM_BYTES = 16 * 2**30


def tpu_devices(topology: str) -> list:
    """Compile-only devices of a TPU topology such as "v5e:2x4" (no TPU needed; the `tpu` extra is)."""
    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError("compiling for TPU needs libtpu: pip install 'embeddinggemma-jax[tpu]'")
    from jax.experimental import topologies

    os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"  # do not take libtpu's lock file: other jax processes may run
    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except jax.errors.JaxRuntimeError as e:
        raise ValueError(f"TPU topology {topology!r}: {e}") from e


# ----------------------------------------------------------------------------------------- FLOP counts


def splash_tile_pairs(t: int, radius: int | None) -> int:
    """(query, key) pairs splash computes: every element of each tile the mask touches."""
    b = min(attention.SPLASH_BLOCK_GLOBAL if radius is None else attention.SPLASH_BLOCK_SLIDING, t)
    if radius is None:
        return t * t
    starts = np.arange(0, t, b)
    qi, kj = starts[:, None], starts[None, :]
    touched = (kj <= qi + b - 1 + radius) & (kj + b - 1 >= qi - radius)
    return int(touched.sum()) * b * b


@dataclasses.dataclass
class Report:
    name: str
    mesh: str
    shape: str
    compile_s: float
    argument: int
    output: int
    temp: float
    total: int
    xla_flops: float
    kernel_flops: float
    analytic_flops: float
    loops: bool = False  # scanned layers or GradCache's chunks: XLA's cost_analysis counts a loop body once
    bytes_accessed: float = 0.0  # HBM bytes per chip, XLA's cost_analysis (a loop body counted once, too)

    def roofline_ms(self) -> float | None:
        """max(compute time at 197 TF/s, HBM time at 819 GB/s) from the compiled counts (None for a looping
        program: its counts miss all but one iteration of each loop)."""
        if self.loops:
            return None
        flops = self.xla_flops + self.kernel_flops
        return 1e3 * max(flops / V5E_BF16_FLOPS, self.bytes_accessed / V5E_HBM_BYTES_PER_S)

    def row(self) -> str:
        """FLOPs, ideal time and ratio from the compiled count; for a looping step (scanned layers, GradCache)
        that count misses all but one iteration, so the analytic FLOPs are shown (marked "a") and no ratio or
        roofline. MFU bound: the analytic FLOPs' share of the roofline time at peak."""
        gib = lambda x: f"{x / 2**30:.2f}"  # noqa: E731
        compiled = self.xla_flops + self.kernel_flops
        if self.loops:
            flops, shown, ratio = self.analytic_flops, f"{self.analytic_flops:.3e} a", "n/a"
        else:
            flops, shown, ratio = compiled, f"{compiled:.3e}", f"{compiled / self.analytic_flops:.3f}"
        roofline = self.roofline_ms()
        if roofline is None:
            hbm = bound = mfu = "n/a"
        else:
            hbm, bound = f"{self.bytes_accessed / 2**30:.1f}", f"{roofline:.1f}"
            mfu = f"{100 * 1e3 * self.analytic_flops / V5E_BF16_FLOPS / roofline:.0f}%"
        return (
            f"| {self.name} | {self.mesh} | {self.shape} | {gib(self.argument)} | {gib(self.output)} | "
            f"{gib(self.temp)} | {gib(self.total)} | {shown} | {1e3 * flops / V5E_BF16_FLOPS:.1f} | "
            f"{ratio} | {hbm} | {bound} | {mfu} | {self.compile_s:.0f} |"
        )


HEADER = (
    "| step | mesh | global shape | argument GiB | output GiB | temp GiB | total GiB | FLOPs/chip | "
    "ideal ms @197 TF/s | compiled/analytic | HBM GiB accessed | roofline ms | MFU bound | compile s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _report(
    name: str,
    mesh: jax.sharding.Mesh,
    shape: str,
    compiled,
    t0: float,
    kernel: float,
    analytic: float,
    loops: bool = False,
) -> Report:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    return Report(
        name,
        ",".join(f"{a}={s}" for a, s in mesh.shape.items() if s > 1),
        shape,
        time.perf_counter() - t0,
        mem.argument_size_in_bytes,
        mem.output_size_in_bytes,
        mem.temp_size_in_bytes,
        total,
        float(cost.get("flops", 0.0)),  # keys with value 0 are omitted
        kernel,
        analytic,
        loops,
        float(cost.get("bytes accessed", 0.0)),
    )


def _kernel_flops(cfg: ModelConfig, impl: str, t: int, rows_per_chip: float, passes: float) -> float:
    """FLOPs inside splash calls (invisible to XLA): tile pairs x 2 flops x head_dim x `passes` matmuls."""
    if not impl.startswith("splash"):
        return 0.0
    tile_pairs = sum(
        splash_tile_pairs(t, None if kind == FULL else cfg.sliding_window_radius) for kind in cfg.layer_types
    )
    return rows_per_chip * passes * 2 * cfg.num_heads * cfg.head_dim * tile_pairs


# ----------------------------------------------------------------------------------------- steps


def _compile_only(mesh: jax.sharding.Mesh) -> jax.sharding.use_abstract_mesh:
    """The mesh as an abstract mesh: jax.set_mesh would make compile-time constants (the splash
    kernel's mask tables) land on the compile-only devices, which cannot hold data."""
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def lower_encode(
    cfg: ModelConfig,
    mesh: jax.sharding.Mesh,
    batch: int,
    t: int,
    impl: AttentionImpl,
    dtype: DTypeLike,
    quantization: quantized.Mode | None = None,
    scan_layers: bool = True,
) -> jax.stages.Lowered:
    """The encode step `EmbeddingGemma.from_pretrained(..., mesh=mesh, quantization=...)` runs on a (batch, t)
    batch: parameters in `dtype` (quantized weights: integers, scales in `dtype`) on their "inference"
    shardings, the batch split over the batch axes. Quantized on a TPU mesh: int8 activations, as there."""
    activations = "int8" if mesh.devices.flat[0].platform == "tpu" else "float"
    module = EmbeddingGemmaModule.abstract(
        cfg,
        dtype=dtype,
        param_dtype=dtype,
        attention_impl=impl,
        scan_layers=scan_layers,
        quantization=quantization,
        activations=activations,
    )
    graphdef, params = nnx.split(module)
    shardings = sharding.param_shardings(params, mesh, "inference")
    abstract = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
    split = sharding.batch_sharding(mesh)
    ids, valid = (jax.ShapeDtypeStruct((batch, t), d, sharding=split) for d in (jnp.int32, jnp.bool_))
    with _compile_only(mesh):
        return build_encode_step(graphdef, mesh, dtype).lower(jax.tree.map(abstract, params, shardings), ids, valid)


def compile_encode(
    cfg: ModelConfig,
    mesh: jax.sharding.Mesh,
    batch: int,
    t: int,
    impl: AttentionImpl,
    quantization: quantized.Mode | None = None,
    scan_layers: bool = True,
) -> Report:
    """The encode step in bfloat16 (see `lower_encode`), compiled; FLOPs count int8 operations too."""
    t0 = time.perf_counter()
    compiled = lower_encode(cfg, mesh, batch, t, impl, jnp.bfloat16, quantization, scan_layers).compile()
    chips = mesh.devices.size
    dense, attn = forward_flops(cfg, t)
    kernel = _kernel_flops(cfg, impl, t, batch / chips, passes=2)
    name = f"encode, {quantization}" if quantization else "encode"
    analytic = batch * (dense + attn) / chips
    return _report(name, mesh, f"{batch} x {t}", compiled, t0, kernel, analytic, loops=scan_layers and cfg.layers_loop)


def compile_train(
    cfg: ModelConfig,
    mesh: jax.sharding.Mesh,
    batch: int,
    t: int,
    impl: AttentionImpl,
    remat: RematPolicy,
    grad_cache: int | None,
    scan_layers: bool = True,
) -> Report:
    """The real train step (embeddinggemma.train): (query, document) pairs of t tokens each, AdamW,
    float32 master weights, bfloat16 compute, parameters and moments by the "train" rules; with
    `grad_cache` rows embedded at a time (GradCache: one extra forward without gradients)."""
    from embeddinggemma.train.config import TrainConfig
    from embeddinggemma.train.step import abstract_batch, build_train_step

    train_cfg = TrainConfig(
        model="-",
        train_file="-",
        output_dir="-",
        global_batch_size=batch,
        attention_impl=impl,
        remat=remat,
        grad_cache_chunk=grad_cache,
        scan_layers=scan_layers,
    )
    step = build_train_step(train_cfg, cfg, mesh, total_steps=1000)
    t0 = time.perf_counter()
    with _compile_only(mesh):
        lowered = step.fn.lower(step.abstract_state, step.abstract_frozen, abstract_batch(batch, 0, t, t))
    compiled = lowered.compile()
    chips, rows = mesh.devices.size, 2 * batch  # queries and documents
    dense, attn = forward_flops(cfg, t)
    cached = grad_cache is not None and grad_cache < batch  # as loss_and_grads decides
    recompute = remat != "none"  # "dots" recomputes only elementwise work: counted as a whole forward too
    passes = 3 + recompute + cached  # forward + backward (2x) + recompute + GradCache's gradient-free forward
    kernel_passes = 9 + 2 * recompute + 2 * cached  # splash matmuls: forward 2, dkv 4, dq 3
    kernel = _kernel_flops(cfg, impl, t, rows / chips, passes=kernel_passes)
    name = f"train, GradCache {grad_cache}" if cached else "train"
    analytic = passes * rows * (dense + attn) / chips
    return _report(
        name,
        mesh,
        f"{batch} pairs x {t}",
        compiled,
        t0,
        kernel,
        analytic,
        loops=cached or (scan_layers and cfg.layers_loop),
    )


def default_mesh(kind: str, chips: int) -> str:
    """Encode: pure data parallel. Train: FSDP over up to 16 chips, data parallel across groups."""
    if kind == "encode":
        return "data=-1"
    return "fsdp=-1" if chips <= 16 else f"data=-1,fsdp={16}"


STEPS = ("encode", "train")


def parameter_count(cfg: ModelConfig) -> int:
    return sum(v.size for v in jax.tree.leaves(nnx.state(EmbeddingGemmaModule.abstract(cfg))))


def compile_steps(
    devices: list,
    steps: Sequence[str] = STEPS,
    *,
    encode_batch: int = 4096,
    train_batch: int = 1024,
    seq_len: int = 512,
    encode_mesh: str | None = None,
    train_mesh: str | None = None,
    attention: AttentionImpl = "splash",
    remat: RematPolicy = "full",
    grad_cache: int | None = None,
    quantization: quantized.Mode | None = None,
    scan_layers: bool = True,
) -> Iterator[Report]:
    """Each requested step of google/embeddinggemma-300m compiled for `devices` (see `tpu_devices`), its report
    as soon as it is compiled. Meshes default to `default_mesh`. `scan_layers=False`: the unrolled program,
    whose FLOP and byte counts are complete (the roofline), at several times the compile time."""
    cfg = ModelConfig.embeddinggemma_300m()
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown AOT steps {unknown}; choose from {', '.join(STEPS)}")
    for kind in steps:
        spec = (encode_mesh if kind == "encode" else train_mesh) or default_mesh(kind, len(devices))
        mesh = sharding.make_mesh(spec, devices)
        if kind == "encode":
            yield compile_encode(cfg, mesh, encode_batch, seq_len, attention, quantization, scan_layers)
        else:
            yield compile_train(cfg, mesh, train_batch, seq_len, attention, remat, grad_cache, scan_layers)
