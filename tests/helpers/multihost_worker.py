"""One process of tests/train/test_multihost.py: joins a 2-process JAX job on CPU (4 devices each), encodes
with a mesh over all 8 devices, then fine-tunes, each process feeding only its half of every batch,
until the test sends SIGTERM to process 0 (both must stop at the same step); then resumes to the end.

    python -m tests.helpers.multihost_worker TINY_DIR TRAIN_CONFIG_JSON OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from embeddinggemma.eval.texts import SHORT, long_text

TEXTS = [*SHORT, long_text(150, 1), long_text(40, 2)]
MESH = "data=2,fsdp=4"


def main(tiny_dir: str, train_config: str, out_dir: str) -> None:
    from embeddinggemma import EmbeddingGemma, TrainConfig, sharding, train
    from embeddinggemma.encode.compilation import enable_compilation_cache
    from embeddinggemma.train.step import TrainSteps

    sharding.maybe_initialize_distributed()
    import jax
    from jax.experimental import multihost_utils

    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
    out = Path(out_dir)
    enable_compilation_cache(out / f"jax-cache{jax.process_index()}")  # the resumed run compiles nothing
    emb = EmbeddingGemma.from_pretrained(tiny_dir, mesh=MESH).encode(TEXTS)
    np.save(out / f"embeddings{jax.process_index()}.npy", emb)
    cfg = TrainConfig.from_dict(json.loads(Path(train_config).read_text()))
    steps = TrainSteps()  # the resumed run reuses the compiled steps, as a notebook holding one would
    preempted = train(cfg, steps=steps)
    multihost_utils.sync_global_devices("preempted")
    result = train(cfg, resume=True, steps=steps)
    (out / f"result{jax.process_index()}.json").write_text(json.dumps([preempted, result]))


if __name__ == "__main__":
    main(*sys.argv[1:])
