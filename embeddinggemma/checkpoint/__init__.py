"""Checkpoints: one `load` for every caller (the encoder, training, conversion), `save` and `convert`.

Two formats hold the same parameters:
* `hf` - a sentence-transformers directory, google/embeddinggemma-300m's layout: what users download
  and what we export (`SentenceTransformer(dir)` loads it).
* `native` - our orbax checkpoint: parameters in any dtype, the ModelConfig, and the ST metadata files.
`hub.locate` turns a directory, a URL (gs://) or a Hub id into a local directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Literal

import jax
from flax import nnx

from embeddinggemma import sharding
from embeddinggemma.checkpoint import hf, native
from embeddinggemma.checkpoint.hub import DEFAULT_MODEL, locate
from embeddinggemma.errors import CheckpointError
from embeddinggemma.files import check_new_dir
from embeddinggemma.model.config import DTypeName, ModelConfig, check_dtype
from embeddinggemma.model.modeling import EmbeddingGemmaModule

Format = Literal["sentence-transformers", "native"]

__all__ = ["DEFAULT_MODEL", "Checkpoint", "CheckpointError", "convert", "load", "locate", "read_config", "save"]


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its config, its parameters (placed), and the directory of its
    sentence-transformers metadata (tokenizer.model, modules.json, prompts), which an export copies."""

    config: ModelConfig
    params: nnx.State
    metadata_dir: Path
    format: Format

    @property
    def tokenizer_file(self) -> Path:
        return self.metadata_dir / "tokenizer.model"


def _format(root: Path) -> ModuleType:
    if native.is_native(root):
        return native
    if (root / "params").is_dir() and not (root / "config.json").exists():  # not "missing config.json"
        raise CheckpointError(f"{root / native.MARKER}: missing; {root} looks like a native checkpoint without it")
    return hf


def read_config(path_or_hub_id: str | Path) -> ModelConfig:
    """The model's configuration alone (no weights read), e.g. to check a training config against it."""
    root = locate(path_or_hub_id)
    return _format(root).read_config(root)


def load(
    path_or_hub_id: str | Path,
    *,
    dtype: DTypeName = "float32",
    mesh: str | jax.sharding.Mesh | None = None,
    purpose: sharding.Mode = "inference",
) -> Checkpoint:
    """Read either format (or a Hub id) with parameters in `dtype`. With a `mesh`, each tensor goes
    straight onto its sharding by the `purpose` rules of `embeddinggemma.sharding` (no replicated copy
    on one device first); without, onto the default device."""
    dtype = check_dtype(dtype)
    root = locate(path_or_hub_id)
    fmt = _format(root)
    cfg = fmt.read_config(root)
    shardings = None
    if mesh is not None:
        skeleton = nnx.state(EmbeddingGemmaModule.abstract(cfg, param_dtype=dtype))
        shardings = sharding.param_shardings(skeleton, mesh, purpose)
    params = fmt.read_params(root, cfg, dtype=dtype, shardings=shardings)
    return Checkpoint(cfg, params, fmt.metadata_dir(root), fmt.FORMAT)


def save(
    params: nnx.State,
    config: ModelConfig,
    metadata_dir: str | Path,
    out_dir: str | Path,
    *,
    format: Format = "sentence-transformers",
) -> Path:
    """Write `params` in `format` to a new directory, atomically (see `hf.write`, `native.write`)."""
    if format == "sentence-transformers":
        return hf.write(params, metadata_dir, out_dir)
    if format == "native":
        return native.write(params, config, metadata_dir, out_dir)
    raise ValueError(f"unknown format {format!r}; use 'sentence-transformers' or 'native'")


def convert(src: str | Path, dst: str | Path) -> Checkpoint:
    """A sentence-transformers directory (or Hub id) -> native checkpoint, or native -> sentence-transformers.
    Parameters stay float32 (the released checkpoint's dtype), so the round trip is bit exact. Returns
    the source as loaded (its `format` says which way it went)."""
    check_new_dir(dst, inputs=[src])
    ckpt = load(src)
    target: Format = "native" if ckpt.format == "sentence-transformers" else "sentence-transformers"
    save(ckpt.params, ckpt.config, ckpt.metadata_dir, dst, format=target)
    return ckpt
