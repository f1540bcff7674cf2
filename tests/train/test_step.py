"""The train step: GradCache equals the full batch, remat changes nothing, and the sharded step on 8
CPU devices equals the single-device step (with negatives on other devices really in the softmax)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from embeddinggemma import TrainConfig, sharding
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.train import losses, step
from tests.helpers.train import EXAMPLES, collate, tiny_config, tiny_params

GRAD_TOL = 1e-5


def _grads(tiny_dir, **overrides):
    cfg = tiny_config(**overrides)
    graphdef, frozen, params = tiny_params(tiny_dir, cfg)
    batch = collate(tiny_dir, cfg)
    run = jax.jit(lambda p, b: step.loss_and_grads(cfg, step.embed_fn(graphdef, frozen), p, b))
    loss, _, grads = run(params, batch)
    return float(loss), grads


def _max_abs_diff(a, b) -> float:
    return max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _max_rel_diff(a, b) -> float:
    """Worst over tensors of max|a - b| / max|b| (float32 sums in another order differ in the last bits)."""
    return max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max() / np.abs(np.asarray(y)).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def full(tiny_dir):
    return _grads(tiny_dir)


@pytest.mark.parametrize(
    "overrides",
    [
        {"grad_cache_chunk": 4},
        {"grad_cache_chunk": 5, "remat": "full"},
        {"remat": "dots"},
        {"grad_cache_chunk": 4, "scan_layers": False, "remat": True},
    ],
    ids=["chunk4", "chunk5-remat-full", "remat-dots", "chunk4-unrolled-remat"],
)
def test_grad_cache_remat_and_unrolled_layers_equal_full_batch(tiny_dir, full, overrides):
    """GradCache, each remat policy and the unrolled layers give the scanned full-batch step's loss and gradients
    (remat True is the policy "full", as configs from before the policies say it)."""
    # 6 queries and 18 documents: neither divides by 4 or 5, so the last chunk is padded.
    loss, grads = _grads(tiny_dir, **overrides)
    assert abs(loss - full[0]) <= GRAD_TOL * abs(full[0])
    assert _max_rel_diff(grads, full[1]) <= GRAD_TOL


def test_frozen_embeddings_have_no_gradient(tiny_dir, full):
    _, grads = _grads(tiny_dir, freeze_embeddings=True, grad_cache_chunk=5)
    assert "embed_tokens" not in grads and "embed_tokens" in full[1]
    assert _max_rel_diff(grads["blocks"], full[1]["blocks"]) <= GRAD_TOL


def test_weight_decay_skips_norm_scales_of_the_layer_stacks(tiny_dir):
    """A stacked norm scale is 2-D (layers, width) but a vector per layer: no weight decay, as before stacking."""
    _, _, params = tiny_params(tiny_dir, tiny_config())
    decays = {path: var.get_value() for path, var in nnx.to_flat_state(step.matrices(params))}
    stack = ("blocks", "sliding_attention")
    assert decays[(*stack, "input_layernorm", "weight")] is False
    assert decays[(*stack, "self_attn", "q_norm", "weight")] is False
    assert decays[(*stack, "mlp", "up_proj")] is True and decays[("dense", 0)] is True
    assert decays[("norm", "weight")] is False


def test_compute_copy_casts_the_matrices_once_and_keeps_the_rest(tiny_dir) -> None:
    """bfloat16 compute: every trained matrix is cast (once per step), the token table (its rows are cast after
    the gather) and the norm scales (applied in float32) are not; float32 compute and QAT cast nothing."""
    cfg = tiny_config(compute_dtype="bfloat16")
    _, _, params = tiny_params(tiny_dir, cfg)
    flat = dict(nnx.to_flat_state(step.compute_copy(cfg, params)))
    dtypes = {path: var.get_value().dtype.name for path, var in flat.items()}
    stack = ("blocks", "sliding_attention")
    assert dtypes[(*stack, "mlp", "up_proj")] == dtypes[(*stack, "self_attn", "q_proj")] == "bfloat16"
    assert dtypes[("dense", 0)] == "bfloat16" and dtypes[("embed_tokens",)] == "float32"
    assert dtypes[(*stack, "input_layernorm", "weight")] == dtypes[("norm", "weight")] == "float32"
    for same in (tiny_config(), tiny_config(compute_dtype="bfloat16", quantization="int8")):
        kept = step.compute_copy(same, params)
        assert all(a is b for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(params), strict=True))


def test_bfloat16_gradients_are_float32_ones_to_bfloat16_rounding(tiny_dir, full):
    """Mixed precision (float32 master weights, bfloat16 compute): the gradients come back in float32 and match
    the float32 step's to bfloat16's rounding, for the full batch and GradCache (summed over chunks in float32).

    The bound is measured, not chosen: on this model JAX's own rule with per-use casts is 0.037 (full batch) and
    0.045 (GradCache) from float32; rounding the cotangent to bfloat16 (mixed.einsum) and summing the query and
    document gradients on one bfloat16 copy (compute_copy), as autocast does, give 0.057 and 0.059."""
    for overrides in ({}, {"grad_cache_chunk": 4}):
        loss, grads = _grads(tiny_dir, compute_dtype="bfloat16", **overrides)
        assert {x.dtype.name for x in jax.tree.leaves(grads)} == {"float32"}
        assert abs(loss - full[0]) <= 2e-2 * abs(full[0])
        assert _max_rel_diff(grads["blocks"], full[1]["blocks"]) <= 7e-2


def _run_step(tiny_dir, mesh_spec: str, batch=None, steps: int = 1):
    cfg = tiny_config(learning_rate=1e-4, mesh=mesh_spec)
    model_cfg = ModelConfig.from_checkpoint_dir(tiny_dir)
    mesh = sharding.make_mesh(mesh_spec, jax.devices()[: 8 if mesh_spec != "data=1" else 1])
    ts = step.build_train_step(cfg, model_cfg, mesh, total_steps=10)
    _, frozen, params = tiny_params(tiny_dir, cfg)
    state = ts.init_state(jax.device_put(params, ts.state_shardings["params"]))
    frozen = jax.device_put(frozen, ts.frozen_shardings)
    batch = collate(tiny_dir, cfg, EXAMPLES + EXAMPLES[:2]) if batch is None else batch  # 8 rows
    batch = sharding.host_local_batch(mesh, *batch.values())
    batch = dict(zip(["q_ids", "q_valid", "d_ids", "d_valid", "q_keys", "d_keys"], batch, strict=True))
    for _ in range(steps):
        state, metrics = ts(state, frozen, batch)
    return jax.device_get(state["params"]), float(metrics["loss"])


@pytest.fixture(scope="module")
def single_device_step(tiny_dir):
    return _run_step(tiny_dir, "data=1")


@pytest.mark.skipif(
    len(jax.devices()) < 8, reason="needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)"
)
@pytest.mark.parametrize("mesh_spec", ["data=2,fsdp=4", "fsdp=4,tensor=2"])
def test_sharded_step_equals_single_device(tiny_dir, single_device_step, mesh_spec):
    single, single_loss = single_device_step
    sharded, sharded_loss = _run_step(tiny_dir, mesh_spec)
    assert sharded_loss == pytest.approx(single_loss, abs=1e-5)
    assert _max_abs_diff(sharded, single) <= 1e-5


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices")
def test_negatives_on_other_devices_are_candidates(tiny_dir):
    """Query 0 lives on device 0; changing the hard negative of example 7 (device 7) must change the
    loss exactly as the single-device formula says, i.e. in the right candidate slot."""
    cfg = tiny_config()
    mesh = sharding.make_mesh("data=8")
    graphdef, frozen, params = tiny_params(tiny_dir, cfg)
    examples = EXAMPLES + EXAMPLES[:2]
    batch = collate(tiny_dir, cfg, examples)
    embed = step.embed_fn(graphdef, frozen)
    bs = sharding.batch_sharding(mesh)

    @jax.jit
    def per_query(b):
        q = embed(params, b["q_ids"], b["q_valid"])
        n, k1, t = b["d_ids"].shape
        d = embed(params, b["d_ids"].reshape(n * k1, t), b["d_valid"].reshape(n * k1, t)).reshape(n, k1, -1)
        return q, d, step.batch_loss(cfg, q, d, b)[0]

    with jax.set_mesh(mesh):
        q, d, loss = per_query(jax.device_put(batch, bs))
    q, d = np.asarray(q), np.asarray(d)
    assert q.shape[0] == 8 and len(mesh.devices.flat) == 8

    # Reference: candidates in ST order [positives; negatives 1; negatives 2] from the gathered arrays,
    # and the same with an example-major order, which a wrong gather would produce.
    def reference(q, d, order="column"):
        docs = np.swapaxes(d, 0, 1) if order == "column" else d.reshape(-1, 1, d.shape[-1]).reshape(3, 8, -1)
        return sum(float(losses.info_nce(q[:, :m], docs[..., :m])) for m in cfg.matryoshka_dims)

    assert float(loss) == pytest.approx(reference(q, d), abs=1e-5)
    assert abs(reference(q, d, order="example") - float(loss)) > 1e-2
    # Replace example 7's second negative (held by device 7) with query 0's positive text: query 0
    # (device 0) now sees a copy of its positive among the candidates, and the loss moves accordingly.
    ex7 = examples[7]
    swapped = [*examples[:7], type(ex7)(ex7.query, ex7.positive, (ex7.negatives[0], examples[0].positive))]
    b2 = collate(tiny_dir, cfg, swapped)
    with jax.set_mesh(mesh):
        _, d2, loss2 = per_query(jax.device_put(b2, bs))
    d2 = np.asarray(d2)
    assert np.allclose(d2[7, 2], d[0, 0], atol=1e-6)
    assert abs(float(loss2) - float(loss)) > 1e-2
    assert float(loss2) == pytest.approx(reference(q, d2), abs=1e-5)


def test_a_run_with_the_same_step_reuses_the_compiled_one(tiny_dir):
    """Configs that differ only in data, outputs or bookkeeping share one step (and its compiled programs);
    a field of the step, or another total (the schedule), gives another."""
    model_cfg, mesh = ModelConfig.from_checkpoint_dir(tiny_dir), sharding.make_mesh("data=-1")
    steps = step.TrainSteps()
    first = steps.get(tiny_config(), model_cfg, mesh, 10)
    other_run = tiny_config(train_file="other.parquet", output_dir="gs://b/x", seed=3, log_every=1, export=False)
    assert steps.get(other_run, model_cfg, mesh, 10) is first
    assert steps.get(tiny_config(learning_rate=1e-3), model_cfg, mesh, 10) is not first
    assert steps.get(tiny_config(), model_cfg, mesh, 11) is not first
    assert steps.get(tiny_config(), model_cfg, sharding.make_mesh("fsdp=-1"), 10) is not first
    assert step.TrainSteps().get(tiny_config(), model_cfg, mesh, 10) is not first  # the cache is the caller's
    in_step = set(TrainConfig.__dataclass_fields__) - step.NOT_IN_STEP
    assert {"learning_rate", "grad_cache_chunk", "compute_dtype", "quantization", "mask_false_negatives"} <= in_step
