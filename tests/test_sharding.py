"""Meshes, sharding rules, and sharded encode == single-device encode (8 virtual CPU devices)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from embeddinggemma import EmbeddingGemma, sharding
from embeddinggemma.eval.texts import SHORT, long_text
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.model.modeling import EmbeddingGemmaModule

needs8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)"
)


def test_parse_mesh_spec():
    assert sharding.parse_mesh_spec("data=2,fsdp=4") == {"data": 2, "fsdp": 4, "tensor": 1}
    assert sharding.parse_mesh_spec(" tensor=2 ") == {"data": 1, "fsdp": 1, "tensor": 2}
    for bad in ("model=2", "data", "data=x", "data=2,data=2", "data=0", "data=-1,fsdp=-1"):
        with pytest.raises(ValueError):
            sharding.parse_mesh_spec(bad)


@needs8
def test_make_mesh():
    mesh = sharding.make_mesh("data=2,fsdp=-1")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert sharding.make_mesh(mesh) is mesh
    assert sharding.batch_size_multiple(mesh) == 8
    with pytest.raises(ValueError, match="needs 4 devices"):
        sharding.make_mesh("data=4")


@needs8
def test_real_model_rules():
    """The rules on the real 300m shapes: table split by vocab; layers split by fsdp only in training."""
    state = nnx.state(EmbeddingGemmaModule.abstract(ModelConfig(), param_dtype="bfloat16"))
    specs = {
        mode: {
            p: v.get_value().spec for p, v in nnx.to_flat_state(sharding.param_shardings(state, "data=2,fsdp=4", mode))
        }
        for mode in sharding.MODES
    }
    for mode in sharding.MODES:
        assert specs[mode][("embed_tokens",)] == P("fsdp", None)
        assert specs[mode][("blocks", "sliding_attention", "self_attn", "k_norm", "weight")] == P(None, None)
    assert specs["inference"][("blocks", "full_attention", "mlp", "gate_proj")] == P(None, None, None)
    assert specs["train"][("blocks", "full_attention", "mlp", "gate_proj")] == P(None, "fsdp", None)
    assert specs["train"][("blocks", "sliding_attention", "self_attn", "o_proj")] == P(None, None, None, "fsdp")
    tensor = {
        p: v.get_value().spec for p, v in nnx.to_flat_state(sharding.param_shardings(state, "fsdp=4,tensor=2", "train"))
    }
    assert tensor[("embed_tokens",)] == P(("fsdp", "tensor"), None)
    assert tensor[("blocks", "sliding_attention", "mlp", "down_proj")] == P(None, "tensor", "fsdp")


def test_indivisible_dims_stay_whole():
    mesh = jax.sharding.AbstractMesh((1, 256, 1), sharding.AXES)
    rules = sharding.logical_rules("train")
    assert sharding.logical_to_spec(("mlp", "embed"), (1152, 768), mesh, rules) == P(None, "fsdp")
    assert sharding.logical_to_spec(("vocab", "embed"), (262144, 768), mesh, rules) == P("fsdp", None)
    assert sharding.logical_to_spec(("embed",), (100,), mesh, rules) == P(None)
    with pytest.raises(KeyError, match="nonsense"):
        sharding.logical_to_spec(("nonsense",), (8,), mesh, rules)


MIXED = [*SHORT[:6], *(long_text(n, seed=n) for n in (40, 150, 230))]


@needs8
@pytest.mark.parametrize(
    ("spec", "table_spec", "mlp_spec"),
    [
        ("data=8", P(None, None), P(None, None, None)),
        ("data=2,fsdp=4", P("fsdp", None), P(None, None, None)),
        ("fsdp=4,tensor=2", P(("fsdp", "tensor"), None), P(None, None, "tensor")),
    ],
)
def test_sharded_encode_matches_single_device(tiny_dir, tiny_model, spec, table_spec, mlp_spec):
    model = EmbeddingGemma.from_pretrained(tiny_dir, mesh=spec)
    table = model.params["embed_tokens"].get_value()
    gate = model.params["blocks"]["sliding_attention"]["mlp"]["gate_proj"].get_value()
    assert table.sharding.spec == table_spec and gate.sharding.spec == mlp_spec
    assert len(table.sharding.device_set) == 8
    # Each device holds only its shard: the table is really split, not replicated.
    rows = table_spec[0] or ()
    split = math.prod(model.mesh.shape[a] for a in ((rows,) if isinstance(rows, str) else rows))
    assert {s.data.shape[0] for s in table.addressable_shards} == {table.shape[0] // split}
    with jax.default_matmul_precision("highest"):
        ours = model.encode(MIXED, batch_size=4)
    ref = tiny_model.encode(MIXED, batch_size=4)
    assert np.abs(ours - ref).max() <= 1e-5
