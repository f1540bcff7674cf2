"""Shared fixtures: a tiny random EmbeddingGemma checkpoint built on the fly, and the real one if set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.tiny_checkpoint import build_tiny_checkpoint

# gcsfs's default filesystem first asks the Storage Control gRPC API for the bucket's layout; the GCS
# emulator of tests/train/test_gcs.py has none, and each lookup would wait out a 60 s timeout. Set before gcsfs
# is imported (it reads this at import).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Converted data and compiled programs go to the test run's own directories (subprocesses inherit them;
    under pytest-xdist each worker has its own, so no two processes write one cache at once)."""
    caches = {
        "EMBEDDINGGEMMA_DATA_CACHE": "data-cache",
        "EMBEDDINGGEMMA_MODEL_CACHE": "model-cache",
        "HF_DATASETS_CACHE": "hf-datasets-cache",
        "EMBEDDINGGEMMA_COMPILATION_CACHE": "jax-cache",
    }
    for var, name in caches.items():
        os.environ[var] = str(tmp_path_factory.mktemp(name))


@pytest.fixture(autouse=True)
def no_in_process_compilation_cache(monkeypatch: pytest.MonkeyPatch):
    """In-process `cli.main([...])` calls leave JAX's persistent compilation cache off. The setting is
    process-wide, so one such call would turn it on for every later test, and jax 0.10 on the CPU aborts
    the whole process when it loads back an executable it compiled itself. CLI tests that run the
    command in a subprocess still use the cache (test_cli checks that a second run loads from it)."""
    import jax

    from embeddinggemma.encode import compilation

    monkeypatch.setattr(compilation, "enable_compilation_cache", lambda directory: None)
    yield
    assert not jax.config.jax_compilation_cache_dir, "a test turned JAX's persistent compilation cache on in-process"


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


@pytest.fixture(scope="session")
def reference_model(reference_dir: Path):
    """The real checkpoint in float32, loaded once for the tests that need it (model/test_reference.py,
    model/test_quantized.py)."""
    from embeddinggemma import EmbeddingGemma

    return EmbeddingGemma.from_pretrained(reference_dir)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A persistent compilation cache for this module's in-process CLI runs (each main() builds a new
    model, whose programs would compile again), detached afterwards so no other test writes to it."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    before = jax.config.jax_compilation_cache_dir
    compilation_cache.reset_cache()
    yield tmp_path_factory.mktemp("jax-cache")
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", before)


@pytest.fixture
def cli_in_process(tiny_dir: Path, module_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """main() as the console script runs it: the tiny model by default, the module's compilation cache
    (the parser reads both from the environment when it is built, on each call)."""
    monkeypatch.setenv("EMBEDDINGGEMMA_CHECKPOINT", str(tiny_dir))
    monkeypatch.setenv("EMBEDDINGGEMMA_COMPILATION_CACHE", str(module_cache))
    monkeypatch.delenv("EMBEDDINGGEMMA_DEBUG", raising=False)


@pytest.fixture(scope="module")
def native_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embeddinggemma.checkpoint import convert

    out = tmp_path_factory.mktemp("native") / "tiny-native"
    convert(tiny_dir, out)
    return out
