"""Shared fixtures: a tiny random EmbeddingGemma checkpoint built on the fly, and the real one if set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_checkpoint import build_tiny_checkpoint


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Converted data and compiled programs go to the test run's own directories (subprocesses inherit them)."""
    for var, name in (("EMBEDDINGGEMMA_DATA_CACHE", "data-cache"), ("HF_DATASETS_CACHE", "hf-datasets-cache")):
        os.environ[var] = str(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-embeddinggemma")


@pytest.fixture(scope="session")
def tiny_st(tiny_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path):
    from embeddinggemma import EmbeddingGemma

    return EmbeddingGemma.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = os.environ.get("EMBEDDINGGEMMA_CHECKPOINT")
    if not path:
        pytest.skip("EMBEDDINGGEMMA_CHECKPOINT is not set (the real google/embeddinggemma-300m directory)")
    return Path(path)
