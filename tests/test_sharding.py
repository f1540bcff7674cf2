"""Meshes, sharding rules, and sharded encode == single-device encode (8 virtual CPU devices)."""

from __future__ import annotations

import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from embeddinggemma import sharding
from embeddinggemma.checkpoint import abstract_state
from embeddinggemma.config import ModelConfig

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
    _, state = abstract_state(ModelConfig(), "bfloat16")
    specs = {
        mode: {
            p: v.get_value().spec for p, v in nnx.to_flat_state(sharding.param_shardings(state, "data=2,fsdp=4", mode))
        }
        for mode in sharding.MODES
    }
    for mode in sharding.MODES:
        assert specs[mode][("embed_tokens",)] == P("fsdp", None)
        assert specs[mode][("layers", 0, "self_attn", "k_norm", "weight")] == P(None)
    assert specs["inference"][("layers", 3, "mlp", "gate_proj")] == P(None, None)
    assert specs["train"][("layers", 3, "mlp", "gate_proj")] == P("fsdp", None)
    assert specs["train"][("layers", 3, "self_attn", "o_proj")] == P(None, None, "fsdp")
    tensor = {
        p: v.get_value().spec for p, v in nnx.to_flat_state(sharding.param_shardings(state, "fsdp=4,tensor=2", "train"))
    }
    assert tensor[("embed_tokens",)] == P(("fsdp", "tensor"), None)
    assert tensor[("layers", 0, "mlp", "down_proj")] == P("tensor", "fsdp")


def test_indivisible_dims_stay_whole():
    mesh = jax.sharding.AbstractMesh((1, 256, 1), sharding.AXES)
    rules = sharding.logical_rules("train")
    assert sharding.logical_to_spec(("mlp", "embed"), (1152, 768), mesh, rules) == P(None, "fsdp")
    assert sharding.logical_to_spec(("vocab", "embed"), (262144, 768), mesh, rules) == P("fsdp", None)
    assert sharding.logical_to_spec(("embed",), (100,), mesh, rules) == P(None)
    with pytest.raises(KeyError, match="nonsense"):
        sharding.logical_to_spec(("nonsense",), (8,), mesh, rules)
