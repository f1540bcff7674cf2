"""Checkpoints: the Hugging Face / sentence-transformers directory <-> our parameters, and our native
(orbax) format.

One table, `_RULES`, says where each HF tensor goes in the NNX state and how it is reshaped. Loading
streams tensors with `safe_open`, checks them against an `nnx.eval_shape` skeleton and places each one
directly on its target sharding; every missing, unexpected or mis-shaped tensor is reported at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from embeddinggemma.config import CheckpointError, ModelConfig
from embeddinggemma.model import EmbeddingGemmaModule

NATIVE_MARKER = "embeddinggemma.json"
NATIVE_FORMAT_VERSION = 1
# Files of an ST directory we carry along verbatim (the tensors are written from the parameters).
METADATA_FILES = (
    "config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "2_Dense/config.json",
    "3_Dense/config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "README.md",
)
REQUIRED_FILES = ("config.json", "modules.json", "tokenizer.model")

Path_ = tuple[str | int, ...]


class _Rule:
    """HF key pattern -> state path, with the reshape between HF (out, in) and our (in, ...) layout."""

    def __init__(self, pattern: str, path: Callable[[re.Match], Path_], kind: str):
        self.pattern, self.path, self.kind = re.compile(pattern), path, kind

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the HF tensor must have for our parameter of `shape`."""
        if self.kind == "same":
            return tuple(shape)
        if self.kind == "in_to_heads":
            return (int(np.prod(shape[1:])), shape[0])
        if self.kind == "heads_to_out":
            return (shape[-1], int(np.prod(shape[:-1])))
        return tuple(reversed(shape))

    def to_ours(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.kind == "same":
            return x
        if self.kind == "in_to_heads":  # (N*H, D) -> (D, N, H)
            return x.T.reshape(shape)
        if self.kind == "heads_to_out":  # (D, N*H) -> (N, H, D)
            return x.T.reshape(shape)
        return x.T  # "transpose": (out, in) -> (in, out)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "same":
            return x
        if self.kind == "in_to_heads":
            return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)
        if self.kind == "heads_to_out":
            return np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)
        return np.ascontiguousarray(x.T)


_L = r"layers\.(\d+)\."
_RULES = (
    _Rule(r"embed_tokens\.weight", lambda m: ("embed_tokens",), "same"),
    _Rule(r"norm\.weight", lambda m: ("norm", "weight"), "same"),
    _Rule(
        _L + r"(input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|post_feedforward_layernorm)"
        r"\.weight",
        lambda m: ("layers", int(m[1]), m[2], "weight"),
        "same",
    ),
    _Rule(
        _L + r"self_attn\.(q_norm|k_norm)\.weight", lambda m: ("layers", int(m[1]), "self_attn", m[2], "weight"), "same"
    ),
    _Rule(
        _L + r"self_attn\.(q_proj|k_proj|v_proj)\.weight",
        lambda m: ("layers", int(m[1]), "self_attn", m[2]),
        "in_to_heads",
    ),
    _Rule(_L + r"self_attn\.o_proj\.weight", lambda m: ("layers", int(m[1]), "self_attn", "o_proj"), "heads_to_out"),
    _Rule(
        _L + r"mlp\.(gate_proj|up_proj|down_proj)\.weight", lambda m: ("layers", int(m[1]), "mlp", m[2]), "transpose"
    ),
    _Rule(r"dense\.(\d+)\.linear\.weight", lambda m: ("dense", int(m[1])), "transpose"),
)


def _match(key: str) -> tuple[_Rule, Path_] | None:
    for rule in _RULES:
        m = rule.pattern.fullmatch(key)
        if m:
            return rule, rule.path(m)
    return None


def _dense_dirs(root: Path) -> list[str]:
    modules = json.loads((root / "modules.json").read_text())
    return [m["path"] for m in modules if m["type"].endswith("Dense")]


def _tensor_files(root: Path) -> Iterator[tuple[Path, str]]:
    """(file, key prefix) pairs: encoder shards in the root, then one file per Dense module."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        yield from ((root / s, "") for s in shards)
    else:
        yield root / "model.safetensors", ""
    for n, sub in enumerate(_dense_dirs(root)):
        yield root / sub / "model.safetensors", f"dense.{n}."


def abstract_state(cfg: ModelConfig, param_dtype: Any) -> tuple[nnx.GraphDef, nnx.State]:
    """The parameter skeleton (shapes and dtypes only; nothing allocated)."""
    abstract = nnx.eval_shape(lambda: EmbeddingGemmaModule(cfg, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


def _place(x: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """Put a host array on its sharding; each device (on every host) receives only its own slice."""
    if sharding is None:
        return jnp.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def load_hf_params(
    root: str | Path,
    cfg: ModelConfig,
    *,
    param_dtype: Any = jnp.float32,
    shardings: nnx.State | None = None,
) -> nnx.State:
    """Read an HF / sentence-transformers directory into an NNX parameter state.

    `shardings`, if given, is a state of `jax.sharding.Sharding` with the skeleton's structure; each
    tensor goes straight to its sharding without a replicated copy on one device first.
    """
    root = Path(root)
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            raise CheckpointError(f"{root}: missing {name}")
    _, skeleton = abstract_state(cfg, param_dtype)
    expected = dict(skeleton.flat_state())
    target = dict(shardings.flat_state()) if shardings is not None else {}
    loaded: dict[Path_, jax.Array] = {}
    errors: list[str] = []
    for file, prefix in _tensor_files(root):
        if not file.is_file():
            errors.append(f"missing file {file}")
            continue
        with safe_open(file, framework="numpy") as f:
            for raw_key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                key = prefix + raw_key
                found = _match(key)
                if found is None or found[1] not in expected:
                    errors.append(f"{file}: unexpected tensor {raw_key!r}")
                    continue
                rule, path = found
                want = expected[path].shape
                got, hf_want = tuple(f.get_slice(raw_key).get_shape()), rule.hf_shape(want)
                if got != hf_want:
                    errors.append(f"{file}: tensor {raw_key!r} has shape {got}, expected {hf_want}")
                    continue
                x = rule.to_ours(f.get_tensor(raw_key), want)
                sharding = target.get(path)
                loaded[path] = _place(x.astype(expected[path].dtype), getattr(sharding, "value", sharding))
    for path in expected:
        if path not in loaded and not any(e.startswith("missing file") for e in errors):
            errors.append(f"missing tensor for {'.'.join(map(str, path))} ({_hf_key(path)})")
    if errors:
        raise CheckpointError(f"cannot load {root}:\n  " + "\n  ".join(errors))
    state = skeleton
    state.replace_by_pure_dict(_nest(loaded))
    return state


def _hf_key(path: Path_) -> str:
    if path[0] == "dense":
        return f"linear.weight in Dense module {path[1]}"
    name = ".".join(map(str, path))
    if path[-1] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        return name + ".weight"
    return name if path[-1] == "weight" else name + ".weight"


def _nest(flat: dict[Path_, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def hf_tensors(state: nnx.State) -> dict[str, dict[str, np.ndarray]]:
    """Our state -> {relative safetensors file: {HF key: array}}, the exact inverse of loading."""
    files: dict[str, dict[str, np.ndarray]] = {"model.safetensors": {}}
    for path, var in state.flat_state():
        value = np.asarray(jax.device_get(var.value if hasattr(var, "value") else var))
        if path[0] == "dense":
            files.setdefault(f"dense{path[1]}", {})["linear.weight"] = np.ascontiguousarray(value.T)
            continue
        key = _hf_key(path)
        rule = _match(key)
        assert rule is not None, key
        files["model.safetensors"][key] = rule[0].to_hf(value)
    return files


@contextmanager
def _atomic_dir(dest: Path) -> Iterator[Path]:
    """Write into a sibling temp dir, then rename: an interrupted write never looks complete."""
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; choose a new output directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_metadata(src: Path, dst: Path) -> None:
    for name in METADATA_FILES:
        if (src / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)


def save_hf(state: nnx.State, metadata_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a sentence-transformers directory (`SentenceTransformer(out_dir)` loads it).

    `metadata_dir` supplies the config, module and tokenizer files (an ST directory or the `hf/`
    folder of a native checkpoint); the tensors come from `state`.
    """
    metadata_dir = Path(metadata_dir)
    with _atomic_dir(Path(out_dir)) as tmp:
        _copy_metadata(metadata_dir, tmp)
        files = hf_tensors(state)
        dense_dirs = _dense_dirs(tmp)
        for name, tensors in files.items():
            rel = name if name == "model.safetensors" else f"{dense_dirs[int(name[5:])]}/model.safetensors"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp / rel), metadata={"format": "pt"})
    return Path(out_dir)


def save_native(state: nnx.State, cfg: ModelConfig, metadata_dir: str | Path, out_dir: str | Path) -> Path:
    """Our checkpoint: orbax parameters + ModelConfig + the original metadata files (for export)."""
    import orbax.checkpoint as ocp

    with _atomic_dir(Path(out_dir)) as tmp:
        _copy_metadata(Path(metadata_dir), tmp / "hf")
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save((tmp / "params").absolute(), nnx.to_pure_dict(state))
        (tmp / NATIVE_MARKER).write_text(
            json.dumps({"format_version": NATIVE_FORMAT_VERSION, "config": cfg.to_dict()}, indent=2)
        )
    return Path(out_dir)


def is_native(path: str | Path) -> bool:
    return (Path(path) / NATIVE_MARKER).is_file()


def read_native_config(path: str | Path) -> ModelConfig:
    meta = json.loads((Path(path) / NATIVE_MARKER).read_text())
    if meta.get("format_version") != NATIVE_FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported native format version {meta.get('format_version')}")
    return ModelConfig.from_dict(meta["config"])


def load_native_params(
    path: str | Path, cfg: ModelConfig, *, param_dtype: Any = None, shardings: nnx.State | None = None
) -> nnx.State:
    """Restore orbax parameters, each directly onto its sharding (or the default device)."""
    import orbax.checkpoint as ocp

    _, skeleton = abstract_state(cfg, jnp.float32)
    stored = ocp.StandardCheckpointer().metadata((Path(path) / "params").absolute())
    stored_tree = getattr(stored, "item_metadata", stored)
    flat_shard = dict(shardings.flat_state()) if shardings is not None else {}

    def target(path_, var):
        meta = _lookup(stored_tree, path_)
        sharding = flat_shard.get(path_)
        sharding = getattr(sharding, "value", sharding) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.ShapeDtypeStruct(var.shape, meta.dtype, sharding=sharding)

    abstract = _nest({p: target(p, v) for p, v in skeleton.flat_state()})
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore((Path(path) / "params").absolute(), abstract)
    if param_dtype is not None:
        restored = jax.tree.map(lambda x: x.astype(param_dtype), restored)
    skeleton.replace_by_pure_dict(restored)
    return skeleton


def _lookup(tree: Any, path: Path_) -> Any:
    for p in path:
        tree = tree[p] if p in tree else tree[str(p)]
    return tree


HUB_HINT = (
    "download it where the Hub is reachable: `huggingface-cli download google/embeddinggemma-300m "
    "--local-dir DIR` (accept the licence at https://huggingface.co/google/embeddinggemma-300m first), "
    "then pass DIR or set EMBEDDINGGEMMA_CHECKPOINT=DIR"
)


def resolve(path_or_hub_id: str | Path) -> Path:
    """A local directory as is; otherwise a Hub id fetched with huggingface_hub (optional dependency)."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; expected a checkpoint directory")
        return path
    name = str(path_or_hub_id)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"{name}: no such checkpoint directory (and not a Hub id like 'google/x')")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError as e:
        raise CheckpointError(
            f"{name} is not a local directory and huggingface_hub is not installed "
            f"(pip install 'embeddinggemma-jax[hub]'), or {HUB_HINT}"
        ) from e
    try:
        return Path(snapshot_download(name))
    except GatedRepoError as e:
        raise CheckpointError(
            f"{name} is gated: accept its licence on https://huggingface.co/{name} and log in "
            "(`huggingface-cli login` or HF_TOKEN)"
        ) from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"{name}: no such Hub repository (or no access to it)") from e
    except Exception as e:  # offline, DNS, proxy, timeouts: huggingface_hub raises many types
        raise CheckpointError(f"could not download {name} from the Hugging Face Hub ({e}); {HUB_HINT}") from e


def convert(src: str | Path, dst: str | Path) -> Path:
    """HF / sentence-transformers directory (or Hub id) -> native checkpoint, or native -> HF.

    Parameters stay float32 (the released checkpoint's dtype), so the round trip is bit exact.
    """
    root = resolve(src)
    if is_native(root):
        cfg = read_native_config(root)
        return save_hf(load_native_params(root, cfg), root / "hf", dst)
    cfg = ModelConfig.from_checkpoint_dir(root)
    return save_native(load_hf_params(root, cfg), cfg, root, dst)
