"""`python -m tests.helpers.save_checkpoint DIR`: RunCheckpoints saves 2 MB of state to DIR as a train run
does (with the CLI's logging), and prints how the save ended. tests/train/test_checkpointing.py runs it with
a file size limit, as a full disk."""

from __future__ import annotations

import sys

import jax

from embeddinggemma.cli import configure_logging
from embeddinggemma.errors import CheckpointError
from embeddinggemma.train.checkpointing import RunCheckpoints

if __name__ == "__main__":
    configure_logging("train")
    state = {f"w{i}": jax.random.normal(jax.random.key(i), (64, 1024)) for i in range(8)}  # random: incompressible
    ckpts = RunCheckpoints(sys.argv[1], keep=2)
    try:
        ckpts.save(1, state, {"position": 1})
        ckpts.save(2, state, {"position": 2})  # reports the failure of step 1, if it failed
        ckpts.wait()
        print("saved")
    except CheckpointError as e:
        print(f"CheckpointError: {e}")
    finally:
        ckpts.close()
