"""Checkpoint loading errors, config refusals, and the bit-exact HF -> native -> HF round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from embeddinggemma import CheckpointError, EmbeddingGemma, ModelConfig
from embeddinggemma.checkpoint import convert, hf, locate
from embeddinggemma.errors import OutputError

TENSOR_FILES = ("model.safetensors", "2_Dense/model.safetensors", "3_Dense/model.safetensors")


@pytest.fixture
def broken(tiny_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny checkpoint to damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "ckpt"))


def _edit_tensors(path: Path, edit) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_convert_round_trip_is_bit_exact(tiny_dir: Path, tiny_st, tmp_path: Path):
    native, back = tmp_path / "native", tmp_path / "back"
    assert convert(tiny_dir, native).format == "sentence-transformers"
    assert convert(native, back).format == "native"
    for rel in TENSOR_FILES:
        a, b = load_file(str(tiny_dir / rel)), load_file(str(back / rel))
        assert a.keys() == b.keys(), rel
        for key in a:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), f"{rel}:{key}"
    from sentence_transformers import SentenceTransformer

    texts = ["a round trip", "through orbax and back"]
    reloaded = SentenceTransformer(str(back), device="cpu").encode(texts)
    np.testing.assert_array_equal(reloaded, tiny_st.encode(texts))
    np.testing.assert_allclose(EmbeddingGemma.from_pretrained(native).encode(texts), reloaded, atol=1e-5, rtol=0)


def test_export_refuses_existing_directory(tiny_model: EmbeddingGemma, tmp_path: Path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        tiny_model.save_pretrained(tmp_path / "out")
    with pytest.raises(OutputError, match="already exists"):
        convert(tiny_model.metadata_dir, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir()) and len(list(tmp_path.iterdir())) == 1  # nothing written


@pytest.mark.parametrize("inside", ["sub", "link/sub", "a/b"])
def test_convert_refuses_an_output_inside_its_source(tiny_dir: Path, tmp_path: Path, inside: str):
    src = tmp_path / "src"
    shutil.copytree(tiny_dir, src)
    (tmp_path / "src" / "a").mkdir()
    (src / "link").symlink_to(src)  # the same directory by another name
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    with pytest.raises(OutputError, match=f"{src / inside} is inside the input directory {src}"):
        convert(src, src / inside)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_missing_tensor_is_named(broken: Path):
    _edit_tensors(broken / "model.safetensors", lambda t: t.pop("layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor for layers\.1\.mlp\.up_proj"):
        EmbeddingGemma.from_pretrained(broken)


def test_unexpected_tensor_is_named(broken: Path):
    _edit_tensors(broken / "model.safetensors", lambda t: t.update(extra_head=np.zeros((2, 2), np.float32)))
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra_head'"):
        EmbeddingGemma.from_pretrained(broken)


def test_misshaped_tensor_names_key_and_shapes(broken: Path):
    def shrink(t):
        t["layers.0.self_attn.k_proj.weight"] = t["layers.0.self_attn.k_proj.weight"][:-1]

    _edit_tensors(broken / "model.safetensors", shrink)
    with pytest.raises(CheckpointError, match=r"'layers\.0\.self_attn\.k_proj\.weight' has shape \(31, 48\)"):
        EmbeddingGemma.from_pretrained(broken)


def test_dense_shape_error_names_its_file(broken: Path):
    _edit_tensors(
        broken / "3_Dense/model.safetensors", lambda t: t.update({"linear.weight": t["linear.weight"][:, :5]})
    )
    with pytest.raises(CheckpointError, match=r"3_Dense/model\.safetensors: tensor 'linear\.weight' has shape"):
        EmbeddingGemma.from_pretrained(broken)


@pytest.mark.parametrize("name", ["tokenizer.model", "modules.json", "config.json", "2_Dense/model.safetensors"])
def test_missing_file_is_named(broken: Path, name: str):
    (broken / name).unlink()
    with pytest.raises(CheckpointError, match=rf"missing.*{Path(name).name}"):
        EmbeddingGemma.from_pretrained(broken)


def test_unsupported_settings_are_refused(broken: Path):
    _edit_json(broken / "1_Pooling/config.json", pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    with pytest.raises(CheckpointError, match="only mean pooling"):
        ModelConfig.from_checkpoint_dir(broken)


def test_causal_config_is_refused(broken: Path):
    _edit_json(broken / "config.json", use_bidirectional_attention=False)
    with pytest.raises(CheckpointError, match="use_bidirectional_attention must be true"):
        ModelConfig.from_checkpoint_dir(broken)


def test_softcapping_is_refused(broken: Path):
    _edit_json(broken / "config.json", attn_logit_softcapping=50.0)
    with pytest.raises(CheckpointError, match="attn_logit_softcapping"):
        ModelConfig.from_checkpoint_dir(broken)


def test_float16_is_refused(tiny_dir: Path):
    with pytest.raises(ValueError, match="float16 is not supported"):
        EmbeddingGemma.from_pretrained(tiny_dir, dtype="float16")


def test_odd_window_is_read_like_transformers(broken: Path, caplog):
    """A file holding an already-converted window (257 style) is halved again, as transformers does."""
    _edit_json(broken / "config.json", sliding_window=17)
    from transformers import AutoConfig

    with caplog.at_level("WARNING"):
        cfg = ModelConfig.from_checkpoint_dir(broken)
    assert "odd" in caplog.text
    assert cfg.sliding_window_radius + 1 == AutoConfig.from_pretrained(broken).sliding_window


def test_300m_preset():
    cfg = ModelConfig.embeddinggemma_300m()
    assert cfg.num_global_layers == 4 and cfg.sliding_window_radius == 256 and cfg.embedding_dim == 768
    assert cfg.prompt_dict["query"] == "task: search result | query: "
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.reference
def test_300m_preset_is_the_real_checkpoint(reference_dir: Path):
    assert ModelConfig.from_checkpoint_dir(reference_dir) == ModelConfig.embeddinggemma_300m()


def test_key_table_maps_every_parameter_both_ways(tiny_dir: Path):
    """Every tensor of the checkpoint has a parameter and back, through the same rule line."""
    cfg = ModelConfig.from_checkpoint_dir(tiny_dir)
    keys = set(load_file(str(tiny_dir / "model.safetensors")))
    keys |= {f"dense.{n}.linear.weight" for n in range(len(cfg.dense_features))}
    state = hf.read_params(tiny_dir, cfg)
    written = hf.tensors(state, cfg)
    assert set(written) == keys
    for key in keys - {"dense.0.linear.weight", "dense.1.linear.weight"}:
        np.testing.assert_array_equal(written[key], load_file(str(tiny_dir / "model.safetensors"))[key])
    o_proj = next(rule for rule in hf.RULES if rule.hf.endswith("o_proj.weight"))
    assert o_proj.to_path("layers.3.self_attn.o_proj.weight") == ("layers", 3, "self_attn", "o_proj")
    assert o_proj.to_key(("layers", 3, "self_attn", "o_proj")) == "layers.3.self_attn.o_proj.weight"
    assert o_proj.hf_shape((3, 256, 768)) == (768, 768)  # (N, H, D) ours <- (D, N*H) PyTorch


def test_truncated_safetensors_is_named(broken: Path):
    """An interrupted download leaves a truncated file: the error names it, no raw safetensors traceback."""
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        EmbeddingGemma.from_pretrained(broken)


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        locate("google/embeddinggemma-300m-does-not-exist")


def test_not_a_checkpoint_path(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        locate(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="missing"):
        hf.read_params(tmp_path, ModelConfig())


def test_a_native_checkpoint_of_per_layer_parameters_loads_stacked(
    tiny_dir: Path, tiny_model: EmbeddingGemma, tmp_path
):
    """Format version 1 (written before the layers were stacked: layers/<i>/... in orbax) loads to the same
    parameters, and `convert` writes it back as the same sentence-transformers files."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from embeddinggemma.checkpoint import native

    cfg = tiny_model.config
    per_layer = {}
    for path, var in nnx.to_flat_state(tiny_model.params):
        x = np.asarray(var.get_value())
        for row, layer in enumerate(hf.unstacked(cfg, path)):
            per_layer[layer] = x[row] if path[0] == "blocks" else x
    old = tmp_path / "v1"
    hf.copy_metadata(tiny_dir, old / "hf")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save((old / "params").absolute(), hf.nest(per_layer))
    (old / native.MARKER).write_text(json.dumps({"format_version": 1, "config": cfg.to_dict()}))
    loaded = EmbeddingGemma.from_pretrained(old)
    for (path, a), (_, b) in zip(nnx.to_flat_state(loaded.params), nnx.to_flat_state(tiny_model.params), strict=True):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))
    convert(old, tmp_path / "st")
    for rel in TENSOR_FILES:
        a, b = load_file(str(tiny_dir / rel)), load_file(str(tmp_path / "st" / rel))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), rel
