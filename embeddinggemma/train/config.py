"""Training configuration: one frozen dataclass, read from a JSON file.

JSON because it needs no dependency and the file is the exact `TrainConfig.to_dict()` written next to
every run's checkpoints (so a run can be reproduced from its output directory). Unknown keys are an
error, not a silent no-op. The configs in the repository's configs/ ship inside the package
(`embeddinggemma.configs`), so `--config train_tiny` works from an installed wheel.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from embeddinggemma.encode.prompts import TITLE_PROMPT
from embeddinggemma.errors import InputError, parse_json
from embeddinggemma.model.attention import AttentionImpl
from embeddinggemma.model.config import DTypeName, ModelConfig
from embeddinggemma.model.modeling import RematPolicy
from embeddinggemma.model.quantized import Mode as QuantizationMode
from embeddinggemma.train.sources import Columns

Schedule = Literal["linear", "cosine"]
SCHEDULES: tuple[Schedule, ...] = get_args(Schedule)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # What to train and where to write it.
    model: str  # sentence-transformers directory, native checkpoint or Hub id
    train_file: str  # JSONL, Parquet (file, glob, directory), a saved `datasets` directory, a Hub id; paths or URLs
    output_dir: str
    eval_file: str | None = None
    columns: dict[str, Any] | None = None  # {"query": ..., "positive": ..., "negatives": [...], "title": ...}

    # Data. Prompts default to the model's "query" / "document" prompts; a title replaces the latter.
    query_prompt: str | None = None
    document_prompt: str | None = None
    title_prompt: str = TITLE_PROMPT
    num_negatives: int = 0  # hard negatives per example (the first k; missing ones are masked out)
    max_query_length: int | None = None  # tokens incl. <bos>/<eos>; None: the model's max_seq_length
    max_doc_length: int | None = None
    skip_malformed: bool = False  # False: a malformed row is an error naming file and row
    seed: int = 0
    prefetch: int = 4  # batches prepared ahead on background threads (0: on the training thread, in turn)
    data_threads: int = 2  # threads reading and tokenizing rows

    # Loss (losses.py). scale = 1 / temperature.
    scale: float = 20.0
    symmetric: bool = False
    matryoshka_dims: tuple[int, ...] | None = None  # None: the model's widths (768, 512, 256, 128 for the 300m)
    matryoshka_weights: tuple[float, ...] | None = None  # None: all 1
    hardness_alpha: float = 0.0  # EmbeddingGemma paper: 5
    mask_false_negatives: bool = True
    spread_out_weight: float = 0.0

    # Optimization.
    global_batch_size: int = 64
    grad_cache_chunk: int | None = None  # rows embedded at once; None: whole batch in one pass
    steps: int | None = None  # None: `epochs` passes over the training file
    epochs: float = 1.0
    learning_rate: float = 2e-5
    warmup_steps: int = 0
    schedule: Schedule = "linear"  # decay after warmup: "linear" or "cosine", to end_learning_rate
    end_learning_rate: float = 0.0
    weight_decay: float = 0.01
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    param_dtype: DTypeName = "float32"  # master weights
    compute_dtype: DTypeName = "bfloat16"
    freeze_embeddings: bool = False  # the 262144 x 768 token table (2/3 of the parameters)
    remat: RematPolicy = "full"  # per block: "full" recomputes it all, "dots" keeps its matmuls; true = "full"
    scan_layers: bool = True  # the blocks as a lax.scan (compiles one block of each type); false: unrolled
    attention_impl: AttentionImpl = "auto"
    mesh: str = "fsdp=-1"  # embeddinggemma.sharding.make_mesh spec
    quantization: QuantizationMode | None = None  # QAT: train (and evaluate) through int8/int4/mixed weights

    # Checkpoints, evaluation, logging.
    save_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int | None = None  # None: before and after training only
    eval_batch_size: int = 64
    log_every: int = 10
    tensorboard: bool = True  # when tensorboard is installed
    export: bool = True  # write <output_dir>/export (sentence-transformers layout) at the end
    profile_steps: tuple[int, int] | None = None  # (first, last): a JAX profiler trace of these steps -> profile/

    def __post_init__(self) -> None:
        """Types from the annotations, then ranges and relations: a bad value fails here, naming the key,
        before anything loads or compiles."""
        if isinstance(self.remat, bool):  # configs from before the policies: true / false
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        hints = typing.get_type_hints(TrainConfig)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):  # JSON and Python callers write lists; the frozen config holds tuples
                value = tuple(value)
                object.__setattr__(self, field.name, value)
            if not _matches(value, hints[field.name]):
                raise ValueError(f"{field.name} must be {_describe(hints[field.name])}, got {value!r}")
        for key in ("model", "train_file", "output_dir", "eval_file"):  # "" would mean the working directory
            if getattr(self, key) is not None and not getattr(self, key).strip():
                raise ValueError(f"{key} must be a path, got {getattr(self, key)!r}")
        positive = ("global_batch_size", "epochs", "learning_rate", "scale", "save_every", "keep_checkpoints")
        positive += ("eval_batch_size", "log_every", "data_threads", "adam_eps")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        optional = ("grad_cache_chunk", "steps", "eval_every", "max_grad_norm", "max_query_length", "max_doc_length")
        for key in optional:  # null: not used / the default
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0 or null, got {getattr(self, key)!r}")
        for key in ("num_negatives", "prefetch", "warmup_steps", "end_learning_rate", "weight_decay", "seed"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        for key in ("adam_b1", "adam_b2"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        dims = self.matryoshka_dims
        if dims is not None and (not dims or min(dims) < 1 or len(set(dims)) != len(dims)):
            raise ValueError(f"matryoshka_dims must be distinct positive widths, got {list(dims)}")
        if dims is not None and self.matryoshka_weights is not None and len(self.matryoshka_weights) != len(dims):
            raise ValueError("matryoshka_weights must have one weight per matryoshka_dims entry")
        if self.columns is not None:
            Columns.from_config(self.columns)
        if self.profile_steps is not None and not (
            len(self.profile_steps) == 2 and 1 <= self.profile_steps[0] <= self.profile_steps[1]
        ):
            raise ValueError(f"profile_steps must be [first, last] with 1 <= first <= last, got {self.profile_steps}")

    def for_model(self, model: ModelConfig) -> TrainConfig:
        """This config checked against the model being trained (read from its config before the weights load),
        with the model's Matryoshka widths where `matryoshka_dims` is null."""
        dims = self.matryoshka_dims or model.matryoshka_dims
        if max(dims) > model.embedding_dim:
            raise ValueError(f"matryoshka_dims {list(dims)}: the model's embeddings are {model.embedding_dim} wide")
        if self.matryoshka_weights is not None and len(self.matryoshka_weights) != len(dims):
            raise ValueError("matryoshka_weights must have one weight per matryoshka_dims entry")
        for key in ("max_query_length", "max_doc_length"):
            if (getattr(self, key) or 0) > model.max_position_embeddings:
                raise ValueError(
                    f"{key} {getattr(self, key)} exceeds the model's {model.max_position_embeddings} positions"
                )
        return dataclasses.replace(self, matryoshka_dims=dims)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a JSON config, a file or the name of a bundled one (`bundled_configs()`); relative
        data/model paths in it stay relative to the working directory."""
        file = config_file(path)
        content = parse_json(file.read_bytes(), str(file))
        if not isinstance(content, dict):
            raise InputError(f"{file}: expected a JSON object, got {type(content).__name__}")
        return cls.from_dict({**content, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value has the annotated type (JSON numbers: an int is a valid float, a bool is not
    a number; finite numbers only)."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, h) for v, h in zip(value, args, strict=True))
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, get_args(hint)))
    if origin is tuple:
        args = get_args(hint)
        plural = {int: "integers", float: "finite numbers"}.get(args[0], _describe(args[0]))
        return f"a list of {plural}" if args[-1] is Ellipsis else f"a list of {len(args)} {plural}"
    if origin is dict:
        return "an object"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a finite number"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def bundled_configs() -> dict[str, Path]:
    """The training configs shipped in the package (the repository's configs/), by name."""
    root = resources.files("embeddinggemma.configs")
    return {f.name.removesuffix(".json"): Path(str(f)) for f in root.iterdir() if f.name.endswith(".json")}


def config_file(name_or_path: str | Path) -> Path:
    """A config file path as given, or the bundled config of that name (`train_tiny`, `train_v5e-8`, ...)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    bundled = bundled_configs()
    if str(name_or_path) not in bundled:
        raise FileNotFoundError(f"{name_or_path}: no such config file or bundled config (bundled: {sorted(bundled)})")
    return bundled[str(name_or_path)]
