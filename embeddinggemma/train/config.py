"""Training configuration: one frozen dataclass, read from a JSON file in configs/.

JSON because the model presets in configs/ are JSON already, it needs no dependency, and the file is
the exact `TrainConfig.to_dict()` written next to every run's checkpoints (so a run can be reproduced
from its output directory). Unknown keys are an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SCHEDULES = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # What to train and where to write it.
    model: str  # sentence-transformers directory, native checkpoint or Hub id
    train_file: str
    output_dir: str
    eval_file: str | None = None

    # Data. Prompts default to the model's "query" / "document" prompts; a title replaces the latter.
    query_prompt: str | None = None
    document_prompt: str | None = None
    title_prompt: str = "title: {title} | text: "
    num_negatives: int = 0  # hard negatives per example (the first k; missing ones are masked out)
    max_query_length: int | None = None  # tokens incl. <bos>/<eos>; None: the model's max_seq_length
    max_doc_length: int | None = None
    skip_malformed: bool = False  # False: a malformed line is an error naming file and line
    seed: int = 0

    # Loss (losses.py). scale = 1 / temperature.
    scale: float = 20.0
    symmetric: bool = False
    matryoshka_dims: tuple[int, ...] = (768, 512, 256, 128)
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
    schedule: str = "linear"  # decay after warmup: "linear" or "cosine", to end_learning_rate
    end_learning_rate: float = 0.0
    weight_decay: float = 0.01
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    param_dtype: str = "float32"  # master weights
    compute_dtype: str = "bfloat16"
    freeze_embeddings: bool = False  # the 262144 x 768 token table (2/3 of the parameters)
    remat: bool = False  # gradient checkpointing per block
    attention_impl: str = "auto"
    mesh: str = "fsdp=-1"  # embeddinggemma.sharding.make_mesh spec

    # Checkpoints, evaluation, logging.
    save_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int | None = None  # None: before and after training only
    eval_batch_size: int = 64
    log_every: int = 10
    tensorboard: bool = True  # when tensorboard is installed
    export: bool = True  # write <output_dir>/export (sentence-transformers layout) at the end

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.global_batch_size < 1 or (self.grad_cache_chunk is not None and self.grad_cache_chunk < 1):
            raise ValueError("global_batch_size and grad_cache_chunk must be positive")
        if self.matryoshka_weights is not None and len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise ValueError("matryoshka_weights must have one weight per matryoshka_dims entry")
        if self.num_negatives < 0 or self.scale <= 0:
            raise ValueError("num_negatives must be >= 0 and scale > 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a JSON config; relative data/model paths stay relative to the working directory."""
        return cls.from_dict({**json.loads(Path(path).read_text()), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
