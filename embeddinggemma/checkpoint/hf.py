"""The sentence-transformers directory (the google/embeddinggemma-300m layout) <-> our parameters.

`RULES` is the whole mapping, one line per kind of tensor: its key in the safetensors files, its path in
our NNX state (a layer's as `layers.{i}...`; `stacked` turns that into its stack and row, as the model
keeps each layer type's blocks in one stack), and its layout. PyTorch stores a Linear weight as (out, in);
we store (in..., out...) with the input side in the first `in_dims` dimensions (q/k/v_proj (D, N, H): 1;
o_proj (N, H, D): 2). Loading and saving both read the same line, so adding a tensor is one line. The
Dense modules' files hold a single `linear.weight` each; they appear here as `dense.{n}.linear.weight`.

Loading streams tensors with `safe_open`, checks each against the module's skeleton, fills each stack's
rows on the host and places it directly on its target sharding; every missing, unexpected or mis-shaped
tensor is reported at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from embeddinggemma.errors import CheckpointError, parse_json
from embeddinggemma.files import atomic_dir
from embeddinggemma.model.config import ModelConfig, reading
from embeddinggemma.model.modeling import STACKS, EmbeddingGemmaModule
from embeddinggemma.model.tokenizer import Tokenizer
from embeddinggemma.sharding import from_host

FORMAT = "sentence-transformers"
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
ENCODER_FILE = "model.safetensors"

ParamPath = tuple[str | int, ...]  # a leaf's path in the NNX state, e.g. ("blocks", "full_attention", "mlp", "up_proj")


def _template_regex(template: str, fields: dict[str, str]) -> re.Pattern:
    """ "layers.{i}.mlp.{proj}" -> a regex with one named group per field (patterns from `fields`)."""
    parts = re.split(r"\{(\w+)(?::[^}]*)?\}", template)
    regex = "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{fields[p]})" for k, p in enumerate(parts))
    return re.compile(regex)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One kind of tensor. `hf` and `ours` are templates with the same fields; in `hf` a field may list
    its alternatives (`{proj:gate_proj|up_proj}`), otherwise it is a number."""

    hf: str
    ours: str
    in_dims: int = 0  # 0: same layout in both; else a Linear weight whose input side is our first in_dims dims

    def __post_init__(self) -> None:
        fields = {name: alt or r"\d+" for name, alt in re.findall(r"\{(\w+)(?::([^}]*))?\}", self.hf)}
        object.__setattr__(self, "_hf_regex", _template_regex(self.hf, fields))
        object.__setattr__(self, "_ours_regex", _template_regex(self.ours, fields))
        object.__setattr__(self, "_hf_format", re.sub(r"\{(\w+):[^}]*\}", r"{\1}", self.hf))

    def to_path(self, key: str) -> ParamPath | None:
        """Our state path for an HF key, or None if this rule does not cover it."""
        m = self._hf_regex.fullmatch(key)
        return None if m is None else _path(self.ours.format(**m.groupdict()))

    def to_key(self, path: ParamPath) -> str | None:
        """The HF key of one of our paths, or None if this rule does not cover it."""
        m = self._ours_regex.fullmatch(".".join(map(str, path)))
        return None if m is None else self._hf_format.format(**m.groupdict())

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the HF tensor has for our parameter of `shape`."""
        if not self.in_dims:
            return tuple(shape)
        return math.prod(shape[self.in_dims :]), math.prod(shape[: self.in_dims])

    def to_ours(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return x.T.reshape(shape) if self.in_dims else x

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if not self.in_dims:
            return x
        return np.ascontiguousarray(x.reshape(math.prod(x.shape[: self.in_dims]), -1).T)


RULES = (
    Rule("embed_tokens.weight", "embed_tokens"),
    Rule("norm.weight", "norm.weight"),
    Rule(
        "layers.{i}.{norm:input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|"
        "post_feedforward_layernorm}.weight",
        "layers.{i}.{norm}.weight",
    ),
    Rule("layers.{i}.self_attn.{norm:q_norm|k_norm}.weight", "layers.{i}.self_attn.{norm}.weight"),
    Rule("layers.{i}.self_attn.{proj:q_proj|k_proj|v_proj}.weight", "layers.{i}.self_attn.{proj}", in_dims=1),
    Rule("layers.{i}.self_attn.o_proj.weight", "layers.{i}.self_attn.o_proj", in_dims=2),
    Rule("layers.{i}.mlp.{proj:gate_proj|up_proj|down_proj}.weight", "layers.{i}.mlp.{proj}", in_dims=1),
    Rule("dense.{n}.linear.weight", "dense.{n}", in_dims=1),
)
DENSE_KEY = re.compile(r"dense\.(\d+)\.(.*)")  # our name for a key of the n-th Dense module's file


def _path(dotted: str) -> ParamPath:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def stacked(cfg: ModelConfig, path: ParamPath) -> tuple[ParamPath, int | None]:
    """(state path, row) of a parameter path: a layer's ("layers", i, ...) is row `stack_position(i)[1]` of its
    type's stack (STACKS, type, ...); any other path is itself, with no row."""
    if path[0] != "layers":
        return path, None
    kind, row = cfg.stack_position(path[1])
    return (STACKS, kind, *path[2:]), row


def unstacked(cfg: ModelConfig, path: ParamPath) -> list[ParamPath]:
    """The per-layer paths whose rows a state path holds (the inverse of `stacked`), in row order."""
    if path[0] != STACKS:
        return [path]
    return [("layers", cfg.stack_layer(path[1], row), *path[2:]) for row in range(cfg.layer_types.count(path[1]))]


def _rule_for_key(key: str) -> tuple[Rule, ParamPath] | None:
    return next(((rule, path) for rule in RULES if (path := rule.to_path(key)) is not None), None)


def _rule_for_path(path: ParamPath) -> tuple[Rule, str]:
    found = next(((rule, key) for rule in RULES if (key := rule.to_key(path)) is not None), None)
    if found is None:
        raise KeyError(f"no checkpoint rule for parameter {'.'.join(map(str, path))}")
    return found


# ------------------------------------------------------------------------------------------ files


def _dense_dirs(root: Path) -> list[str]:
    modules = json.loads((root / "modules.json").read_text())
    return [m["path"] for m in modules if m["type"].endswith("Dense")]


def _tensor_files(root: Path) -> Iterator[tuple[Path, str]]:
    """(file, key prefix) pairs: encoder shards in the root, then one file per Dense module."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        content = parse_json(index.read_bytes(), str(index), error=CheckpointError)
        with reading(index):
            shards = sorted(set(content["weight_map"].values()))
        yield from ((root / s, "") for s in shards)
    else:
        yield root / ENCODER_FILE, ""
    for n, sub in enumerate(_dense_dirs(root)):
        yield root / sub / ENCODER_FILE, f"dense.{n}."


def _describe(root: Path, key: str) -> str:
    """Where an HF key lives, for messages: the key itself, or the Dense module's file and key."""
    m = DENSE_KEY.fullmatch(key)
    return key if m is None else f"{m[2]} in {_dense_dirs(root)[int(m[1])]}/{ENCODER_FILE}"


# ------------------------------------------------------------------------------------------ reading


def read_config(root: Path) -> ModelConfig:
    return ModelConfig.from_checkpoint_dir(root)


def metadata_dir(root: Path) -> Path:
    return root


def place(x: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """Put a host array on its sharding; each device (on every host) receives only its own slice."""
    if sharding is None:
        return jnp.asarray(x)
    return from_host(x, sharding)


def _read_tensor(f: Any, file: Path, key: str) -> np.ndarray:
    """One tensor of an open safetensors file as a numpy array. bfloat16, which numpy lacks (safetensors'
    numpy reader refuses it), is read from the file's bytes as ml_dtypes.bfloat16: the loader then casts
    it like any other dtype, so a checkpoint saved in bfloat16 loads as one saved in float32 does."""
    if f.get_slice(key).get_dtype() != "BF16":
        return f.get_tensor(key)
    import ml_dtypes  # a dependency of jax

    with open(file, "rb") as raw:
        (header_len,) = struct.unpack("<Q", raw.read(8))
        entry = json.loads(raw.read(header_len))[key]
        begin, end = entry["data_offsets"]
        raw.seek(8 + header_len + begin)
        data = raw.read(end - begin)
    return np.frombuffer(data, dtype=ml_dtypes.bfloat16).reshape(entry["shape"])


def read_params(
    root: str | Path, cfg: ModelConfig, *, dtype: DTypeLike = jnp.float32, shardings: nnx.State | None = None
) -> nnx.State:
    """Read an HF / sentence-transformers directory into an NNX parameter state in `dtype`.

    `shardings`, if given, is a state of `jax.sharding.Sharding` with the skeleton's structure; each
    tensor goes straight to its sharding without a replicated copy on one device first.
    """
    root = Path(root)
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            raise CheckpointError(f"{root}: missing {name}")
    skeleton = nnx.state(EmbeddingGemmaModule.abstract(cfg, param_dtype=dtype))
    expected = dict(skeleton.flat_state())
    target = dict(shardings.flat_state()) if shardings is not None else {}
    host: dict[ParamPath, np.ndarray] = {}  # each parameter, its stack's rows filled as the files are read
    seen: set[ParamPath] = set()  # the per-layer paths read
    errors: list[str] = []
    for file, prefix in _tensor_files(root):
        if not file.is_file():
            errors.append(f"missing file {file}")
            continue
        try:
            with safe_open(file, framework="numpy") as f:
                for raw_key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    found = _rule_for_key(prefix + raw_key)
                    path, row = stacked(cfg, found[1]) if found is not None else (None, None)
                    if path not in expected or (row is not None and row >= expected[path].shape[0]):
                        errors.append(f"{file}: unexpected tensor {raw_key!r}")
                        continue
                    rule, spec = found[0], expected[path]
                    want = spec.shape if row is None else spec.shape[1:]
                    got, hf_want = tuple(f.get_slice(raw_key).get_shape()), rule.hf_shape(want)
                    if got != hf_want:
                        errors.append(f"{file}: tensor {raw_key!r} has shape {got}, expected {hf_want}")
                        continue
                    x = rule.to_ours(_read_tensor(f, file, raw_key), want).astype(spec.dtype)
                    if row is None:
                        host[path] = x
                    else:
                        host.setdefault(path, np.empty(spec.shape, spec.dtype))[row] = x
                    seen.add(found[1])
        except (SafetensorError, OSError) as e:  # a truncated download, a file of another kind
            raise CheckpointError(
                f"{file}: not a readable safetensors file ({e}); if a download was interrupted, download it again"
            ) from e
    if not any(e.startswith("missing file") for e in errors):
        errors += [
            f"missing tensor for {'.'.join(map(str, layer))} ({_describe(root, _rule_for_path(layer)[1])})"
            for path in expected
            for layer in unstacked(cfg, path)
            if layer not in seen
        ]
    if errors:
        raise CheckpointError(f"cannot load {root}:\n  " + "\n  ".join(errors))
    loaded = {path: place(x, getattr(target.get(path), "value", target.get(path))) for path, x in host.items()}
    skeleton.replace_by_pure_dict(nest(loaded))
    return skeleton


def nest(flat: dict[ParamPath, Any]) -> dict:
    """{("a", 0, "b"): x} -> {"a": {0: {"b": x}}}, the pure-dict form of an NNX state."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


# ------------------------------------------------------------------------------------------ writing


def tensors(state: nnx.State, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our state -> {HF key: array} (Dense modules as `dense.{n}.linear.weight`), the inverse of reading: each
    stack's rows go back to their layers' keys."""
    out = {}
    for path, var in state.flat_state():
        x = np.asarray(jax.device_get(var.value if hasattr(var, "value") else var))
        layers = unstacked(cfg, path)
        for row, layer in enumerate(layers):
            rule, key = _rule_for_path(layer)
            out[key] = rule.to_hf(x[row] if path[0] == STACKS else x)
    return out


def copy_metadata(src: Path, dst: Path) -> None:
    for name in METADATA_FILES:
        if (src / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)


def check_metadata(metadata: Path) -> None:
    """The metadata files an export copies must read back: a corrupt one (the source's, e.g. a native
    checkpoint's hf/ folder, which loading does not read) is refused by name instead of completing an
    output directory that cannot be loaded. The JSON files nothing here reads (tokenizer.json, ...) must parse."""
    Tokenizer(metadata / "tokenizer.model", read_config(metadata))
    for name in METADATA_FILES:
        if name.endswith(".json") and (metadata / name).is_file():
            parse_json((metadata / name).read_bytes(), str(metadata / name), error=CheckpointError)


def write(state: nnx.State, metadata: str | Path, out_dir: str | Path, *, replace: bool = False) -> Path:
    """Write a sentence-transformers directory (`SentenceTransformer(out_dir)` loads it), atomically.

    `metadata` supplies the config, module and tokenizer files (an ST directory or the `hf/` folder
    of a native checkpoint); the tensors come from `state`. `replace` swaps out an existing directory
    once the new one is complete.
    """
    check_metadata(Path(metadata))
    cfg = read_config(Path(metadata))
    with atomic_dir(out_dir, replace=replace) as tmp:
        copy_metadata(Path(metadata), tmp)
        files: dict[Path, dict[str, np.ndarray]] = {}
        dense_dirs = _dense_dirs(tmp)
        for key, x in tensors(state, cfg).items():
            m = DENSE_KEY.fullmatch(key)
            file, name = (ENCODER_FILE, key) if m is None else (f"{dense_dirs[int(m[1])]}/{ENCODER_FILE}", m[2])
            files.setdefault(tmp / file, {})[name] = x
        for file, contents in files.items():
            file.parent.mkdir(parents=True, exist_ok=True)
            try:
                save_file(contents, str(file), metadata={"format": "pt"})
            except SafetensorError as e:  # an I/O error (a full disk) from the Rust writer
                raise OSError(f"cannot write {out_dir}: {file.relative_to(tmp)}: {e}") from e
    return Path(out_dir)
