"""Shared pieces of the training tests: a small batch and the tiny model split for training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from embeddinggemma.checkpoint import hf
from embeddinggemma.encode.prompts import Prompts
from embeddinggemma.eval.texts import SHORT, long_text
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.train import step
from embeddinggemma.train.config import TrainConfig
from embeddinggemma.train.data import Collator
from embeddinggemma.train.sources import Example
from tests.helpers import ROOT

TINY_DIMS = (48, 32, 16, 8)

EXAMPLES = [
    Example("Which planet is known as the Red Planet?", SHORT[1], (SHORT[2], long_text(30, 1))),
    Example("capital of Japan", SHORT[5], (SHORT[6], SHORT[7]), title="東京"),
    Example("add two integers in python", SHORT[9], (SHORT[10], long_text(60, 2))),
    Example("fast fox", SHORT[3], (SHORT[4], SHORT[11])),
    Example("cat on the mat", SHORT[4], (SHORT[3], long_text(20, 3))),
    Example("egypt capital", SHORT[8], (SHORT[7], SHORT[14]), title="Cairo"),
]


def tiny_config(**overrides) -> TrainConfig:
    """fp32 everywhere so comparisons with PyTorch and between code paths are tight. The paths are
    placeholders: the step tests pass the model and batches themselves and never read or write them."""
    base = dict(
        model="tiny",
        train_file="train.jsonl",
        output_dir="out",
        matryoshka_dims=TINY_DIMS,
        compute_dtype="float32",
        mask_false_negatives=False,
        num_negatives=2,
    )
    return TrainConfig(**{**base, **overrides})


def collate(tiny_dir: Path, cfg: TrainConfig, examples=EXAMPLES) -> dict:
    model_cfg = ModelConfig.from_checkpoint_dir(tiny_dir)
    prompts = Prompts.for_model(model_cfg, None, None, cfg.title_prompt)
    collator = Collator(
        tiny_dir / "tokenizer.model",
        model_cfg,
        prompts,
        num_negatives=cfg.num_negatives,
        mask_false_negatives=cfg.mask_false_negatives,
    )
    return collator(examples)


def tiny_params(tiny_dir: Path, cfg: TrainConfig) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, frozen, params) of the tiny checkpoint, float32."""
    model_cfg = ModelConfig.from_checkpoint_dir(tiny_dir)
    graphdef, frozen, params = step.split_module(step.training_module(cfg, model_cfg), cfg.freeze_embeddings)
    loaded = hf.read_params(tiny_dir, model_cfg)
    module = nnx.merge(graphdef, frozen, params)
    nnx.update(module, loaded)
    _, frozen, params = step.split_module(module, cfg.freeze_embeddings)
    return graphdef, jax.tree.map(lambda x: x, frozen), params


def tiny_run_config(tiny_dir: Path, data: tuple[Path, Path], out: Path, **overrides: Any) -> dict[str, Any]:
    """configs/train_tiny.json pointed at the tiny checkpoint, a (train, eval) split and `out`."""
    base = json.loads((ROOT / "configs" / "train_tiny.json").read_text())
    return {
        **base,
        "model": str(tiny_dir),
        "train_file": str(data[0]),
        "eval_file": str(data[1]),
        "output_dir": str(out),
        "tensorboard": False,
        **overrides,
    }


def as_parquet(jsonl: Path) -> Path:
    """The rows of a JSONL file in our schema as Parquet (negatives a list column), beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    path = jsonl.with_suffix(".parquet")
    pq.write_table(pa.table({key: [r[key] for r in rows] for key in ("query", "positive", "negatives")}), path)
    return path


def final_state(out: Path, like: Any = None) -> tuple[int, dict[str, Any]]:
    """(step, state) of the newest checkpoint of a run. `like` gives the target tree, needed to read a
    checkpoint written by a different process topology; it is placed on this process's first device."""
    import orbax.checkpoint as ocp

    target = None
    if like is not None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
    ckpts = ocp.CheckpointManager(out.absolute() / "checkpoints")
    step = ckpts.latest_step()
    restored = ckpts.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return step, restored["state"]
