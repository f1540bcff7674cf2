"""The AOT report describes the program users run, and the sharded encode and train steps compile for a
TPU v5e slice (compile-only devices; needs the `tpu` extra)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from embeddinggemma import EmbeddingGemma, sharding
from embeddinggemma.bench import aot
from embeddinggemma.model.config import FULL, SLIDING, ModelConfig
from embeddinggemma.model.flops import attended_pairs

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")


@needs8
@pytest.mark.parametrize("mesh", ["data=2,fsdp=4", "data=8"])
def test_aot_encode_is_the_encoder_program(tiny_dir, mesh):
    """The AOT report lowers the same program `EmbeddingGemma.encode` runs on that mesh: equal HLO text."""
    model = EmbeddingGemma.from_pretrained(tiny_dir, mesh=mesh)
    tokens, valid = model.pad_batch([[2, 5, 6, 1]] * 8)
    split = sharding.batch_sharding(model.mesh)
    tokens, valid = (jax.make_array_from_callback(x.shape, split, lambda i, x=x: x[i]) for x in (tokens, valid))
    with jax.set_mesh(model.mesh):
        ours = model._forward.lower(model.params, tokens, valid).as_text()
    report = aot.lower_encode(model.config, model.mesh, 8, tokens.shape[1], "auto", np.float32).as_text()
    assert ours == report


def test_flop_counts_follow_the_window():
    # radius 2 on 6 tokens: each query sees 3 + 4 + 5 + 5 + 4 + 3 keys
    assert attended_pairs(6, 2) == 24
    assert attended_pairs(6, None) == 36
    # 2048 tokens, radius 256, 128-tiles: 5 tiles per row of tiles except near the ends
    assert aot.splash_tile_pairs(2048, 256) == (16 * 5 - 2 * 3) * 128 * 128
    assert aot.splash_tile_pairs(2048, 256) / attended_pairs(2048, 256) < 1.3


@pytest.fixture(scope="module")
def v5e_2x2():
    pytest.importorskip("libtpu", reason="needs the tpu extra (pip install -e '.[tpu]')")
    try:
        return aot.tpu_devices("v5e:2x2")
    except Exception as e:  # libtpu present but unusable here
        pytest.skip(f"no TPU compiler: {e}")


def test_sharded_encode_compiles_for_v5e(v5e_2x2):
    """The scanned encode step (what users run) fits; unrolled, XLA counts its FLOPs in full: the analytic
    FLOPs plus the splash kernel's tile padding, and the same parameters per chip as scanned. The counts
    come from three layers of the real shapes (two sliding, one global: a scanned run and a single block);
    24 unrolled would repeat them, in minutes."""
    cfg = ModelConfig.embeddinggemma_300m()
    mesh = sharding.make_mesh("data=2,fsdp=2", v5e_2x2)
    report = aot.compile_encode(cfg, mesh, batch=8, t=512, impl="splash")
    assert 0 < report.total < aot.V5E_HBM_BYTES and report.loops and "a |" in report.row()
    # bf16 layers replicated, the 262144 x 768 table split over fsdp=2: ~0.2 GB + 0.2 GB per chip
    assert 0.35e9 < report.argument < 0.5e9
    three = dataclasses.replace(cfg, num_layers=3, layer_types=(SLIDING, SLIDING, FULL))
    unrolled = aot.compile_encode(three, mesh, batch=8, t=512, impl="splash", scan_layers=False)
    scanned = aot.compile_encode(three, mesh, batch=8, t=512, impl="splash")
    assert unrolled.argument == scanned.argument and scanned.loops and not unrolled.loops
    assert unrolled.kernel_flops > 0
    assert 0.95 < (unrolled.xla_flops + unrolled.kernel_flops) / unrolled.analytic_flops < 1.15
    # the roofline, from the unrolled program only: every parameter is read at least once, and neither the
    # compute nor the HBM time can be beaten; a scanned program's counts miss its loop's iterations
    assert unrolled.bytes_accessed >= unrolled.argument
    roofline = unrolled.roofline_ms()
    assert roofline >= 1e3 * unrolled.analytic_flops / aot.V5E_BF16_FLOPS
    assert roofline >= 1e3 * unrolled.argument / aot.V5E_HBM_BYTES_PER_S
    mfu = float(unrolled.row().split("|")[13].strip().removesuffix("%"))
    assert 0 < mfu <= 100
    assert report.roofline_ms() is None and report.row().split("|")[11:14] == [" n/a "] * 3


def test_grad_cache_train_step_compiles_in_less_memory(v5e_2x2):
    """The real train step (AdamW, fp32 master weights, splash) for v5e:2x2 on a 2-layer model (one
    sliding, one global): GradCache's chunks cut activation memory and its FLOPs stay accounted for."""
    cfg = dataclasses.replace(
        ModelConfig.embeddinggemma_300m(), num_layers=2, layer_types=(SLIDING, FULL), vocab_size=4096
    )
    mesh = sharding.make_mesh("fsdp=4", v5e_2x2)
    full = aot.compile_train(cfg, mesh, batch=64, t=512, impl="splash", remat=True, grad_cache=None)
    cached = aot.compile_train(cfg, mesh, batch=64, t=512, impl="splash", remat=True, grad_cache=16)
    assert cached.name == "train, GradCache 16" and full.name == "train"
    assert cached.temp < 0.6 * full.temp
    assert 0.95 < (full.xla_flops + full.kernel_flops) / full.analytic_flops < 1.15
    # GradCache: 1 extra forward in the analytic count; XLA counts each chunk loop's body once, so no ratio
    assert cached.analytic_flops == pytest.approx(full.analytic_flops * 5 / 4)
    assert cached.loops and "n/a" in cached.row() and f"{cached.analytic_flops:.3e} a" in cached.row()
