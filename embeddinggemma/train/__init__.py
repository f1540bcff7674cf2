"""Contrastive Matryoshka fine-tuning: `train(TrainConfig.from_file("configs/train_tiny.json"))`.

Modules: config (TrainConfig, JSON), data (JSONL -> padded batches, resumable), losses (InfoNCE,
Matryoshka, spread-out), step (jitted sharded step, GradCache, `build_train_step` for AOT), evaluate
(IR metrics), checkpointing (orbax), loop (`train`).
"""

from embeddinggemma.train.config import TrainConfig
from embeddinggemma.train.loop import train
from embeddinggemma.train.step import abstract_batch, build_train_step

__all__ = ["TrainConfig", "abstract_batch", "build_train_step", "train"]
