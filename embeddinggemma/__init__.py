"""EmbeddingGemma in JAX / Flax NNX: sentence-transformers' vectors, sharded over a device mesh, fine-tuned
with the contrastive Matryoshka recipe.

The public API is what this module exports; the subpackages, from the bottom up:
model (config, NNX modules, attention, tokenizer, quantized weights) -> checkpoint (load / save / convert)
-> encode (`EmbeddingGemma`, prompts, batching, output precision) -> corpus, eval, serve, train -> bench, cli.
"""

import importlib.metadata as _metadata

from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.encode.precision import quantize_embeddings
from embeddinggemma.errors import CheckpointError, DataError, EmbeddingGemmaError, InputError, OutputError
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.train.config import TrainConfig
from embeddinggemma.train.loop import train

try:
    __version__ = _metadata.version("embeddinggemma-jax")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "CheckpointError",
    "DataError",
    "EmbeddingGemma",
    "EmbeddingGemmaError",
    "InputError",
    "ModelConfig",
    "OutputError",
    "TrainConfig",
    "quantize_embeddings",
    "train",
]
