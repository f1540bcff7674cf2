"""EmbeddingGemma-300m in JAX / Flax NNX."""

from embeddinggemma.config import CheckpointError, ModelConfig
from embeddinggemma.encoder import EmbeddingGemma
from embeddinggemma.model import EmbeddingGemmaModule

__all__ = ["CheckpointError", "EmbeddingGemma", "EmbeddingGemmaModule", "ModelConfig"]
__version__ = "0.1.0"
