"""Our native checkpoint: orbax parameters (any dtype) + the ModelConfig + the original ST metadata files.

Layout: `embeddinggemma.json` (format version and config), `params/` (orbax), `hf/` (the
sentence-transformers metadata and tokenizer files, so the model exports back without its source).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from embeddinggemma.checkpoint import hf
from embeddinggemma.config import CheckpointError, ModelConfig
from embeddinggemma.files import atomic_dir
from embeddinggemma.model import EmbeddingGemmaModule

FORMAT = "native"
MARKER = "embeddinggemma.json"
FORMAT_VERSION = 1


def is_native(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def read_config(root: Path) -> ModelConfig:
    file = Path(root) / MARKER
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: invalid JSON ({e})") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{file}: unsupported native format version {meta.get('format_version')}")
    return ModelConfig.from_dict(meta["config"])


def metadata_dir(root: Path) -> Path:
    return Path(root) / "hf"


def _lookup(tree: Any, path: hf.ParamPath) -> Any:
    for p in path:
        tree = tree[p] if p in tree else tree[str(p)]
    return tree


def read_params(
    root: str | Path, cfg: ModelConfig, *, dtype: DTypeLike = jnp.float32, shardings: nnx.State | None = None
) -> nnx.State:
    """Restore the parameters, each directly onto its sharding (or the default device), in `dtype`."""
    import orbax.checkpoint as ocp

    directory = (Path(root) / "params").absolute()
    skeleton = nnx.state(EmbeddingGemmaModule.abstract(cfg, param_dtype=dtype))
    flat_shard = dict(shardings.flat_state()) if shardings is not None else {}
    try:
        stored = ocp.StandardCheckpointer().metadata(directory)
        stored_tree = getattr(stored, "item_metadata", stored)

        def target(path: hf.ParamPath, var: Any) -> jax.ShapeDtypeStruct:
            sharding = flat_shard.get(path)
            sharding = getattr(sharding, "value", sharding) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
            return jax.ShapeDtypeStruct(var.shape, _lookup(stored_tree, path).dtype, sharding=sharding)

        abstract = hf.nest({p: target(p, v) for p, v in skeleton.flat_state()})
        with ocp.StandardCheckpointer() as ckpt:
            restored = ckpt.restore(directory, abstract)
    except (FileNotFoundError, KeyError, ValueError) as e:  # a missing, partial or foreign orbax directory
        raise CheckpointError(f"{directory}: cannot restore the parameters ({e})") from e
    skeleton.replace_by_pure_dict(jax.tree.map(lambda x: x.astype(dtype), restored))
    return skeleton


def write(state: nnx.State, cfg: ModelConfig, metadata: str | Path, out_dir: str | Path) -> Path:
    """Our checkpoint, written atomically; `metadata` supplies the ST files (see hf.write)."""
    import orbax.checkpoint as ocp

    with atomic_dir(out_dir) as tmp:
        hf.copy_metadata(Path(metadata), tmp / "hf")
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save((tmp / "params").absolute(), nnx.to_pure_dict(state))
        (tmp / MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION, "config": cfg.to_dict()}, indent=2))
    return Path(out_dir)
