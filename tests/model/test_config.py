"""A checkpoint's numeric settings are read as JSON typed them: a string, a float where an integer belongs, or
a boolean is refused naming the file, the key, the value and its type (int() would take "48", and a "48"
compared with 48 once read 'in_features 48 != previous width 48')."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from embeddinggemma.errors import CheckpointError
from embeddinggemma.model.config import ModelConfig

# (file, key, value as JSON) -> the message
BAD_SETTINGS = {
    ("config.json", "hidden_size", '"48"'): "config.json: hidden_size must be an integer, got '48' (str)",
    ("config.json", "hidden_size", "48.0"): "config.json: hidden_size must be an integer, got 48.0 (float)",
    ("config.json", "num_hidden_layers", "true"): "config.json: num_hidden_layers must be an integer, got True (bool)",
    ("config.json", "rms_norm_eps", '"1e-6"'): "config.json: rms_norm_eps must be a number, got '1e-6' (str)",
    ("config.json", "vocab_size", "null"): "config.json: vocab_size must be an integer, got None (NoneType)",
    ("2_Dense/config.json", "in_features", '"48"'): "in_features must be an integer, got '48' (str)",
    ("2_Dense/config.json", "in_features", "32"): "2_Dense/config.json: in_features 32 != previous width 48",
    ("3_Dense/config.json", "out_features", "[48]"): "3_Dense/config.json: out_features must be an integer, got [48]",
    ("sentence_bert_config.json", "max_seq_length", '"2048"'): "max_seq_length must be an integer, got '2048' (str)",
}


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=lambda c: f"{c[0]}:{c[1]}={c[2]}")
def test_numeric_settings_are_named_with_their_value_and_type(case, tiny_dir: Path, tmp_path: Path) -> None:
    name, key, value = case
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, copy, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer*"))
    settings = json.loads((copy / name).read_text())
    (copy / name).write_text(json.dumps({**settings, key: json.loads(value)}))
    with pytest.raises(CheckpointError) as raised:
        ModelConfig.from_checkpoint_dir(copy)
    assert str(raised.value).startswith(str(copy)) and BAD_SETTINGS[case] in str(raised.value), str(raised.value)
    assert ModelConfig.from_checkpoint_dir(tiny_dir).hidden_size == 48


def test_a_native_checkpoints_numbers_are_checked_too(tiny_dir: Path, tmp_path: Path) -> None:
    from embeddinggemma.checkpoint import native

    config = ModelConfig.from_checkpoint_dir(tiny_dir).to_dict()
    marker = tmp_path / native.MARKER
    marker.write_text(json.dumps({"format_version": native.FORMAT_VERSION, "config": config}))
    assert native.read_config(tmp_path) == ModelConfig.from_checkpoint_dir(tiny_dir)
    marker.write_text(json.dumps({"format_version": native.FORMAT_VERSION, "config": {**config, "hidden_size": "48"}}))
    with pytest.raises(CheckpointError) as raised:
        native.read_config(tmp_path)
    assert str(raised.value) == f"{marker}: hidden_size must be an integer, got '48' (str)"
