"""`train` killed and terminated at random points resumes to exactly the uninterrupted run's model."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma import EmbeddingGemma
from embeddinggemma.cli.train import PREEMPTED
from tests.helpers.cli import cli_env, interrupted_cache
from tests.helpers.faults import (
    interrupt,
    leaves,
)


@pytest.mark.slow  # a first run compiles the train step (about a minute); later runs find it in the cache
def test_training_killed_then_terminated_resumes_to_the_same_model(tiny_dir: Path, tmp_path: Path) -> None:
    """kill -9 and then SIGTERM at seeded random points of a short `train` (resumed with --resume each
    time): the newest checkpoint always restores, export/ exists only when complete, and the run ends with
    exactly the parameters of an uninterrupted one. Then a damaged checkpoint is named on --resume."""
    from tests.helpers.retrieval import write_split
    from tests.helpers.train import final_state, tiny_run_config

    rng = random.Random(8)
    data = write_split(tmp_path / "data")
    settings_ = dict(steps=16, save_every=4, log_every=1, eval_file=None, eval_every=None, grad_cache_chunk=None)

    log = tmp_path / "train.log"  # a file, not a pipe nobody reads while the run goes on

    def start(name: str, *extra: str) -> subprocess.Popen:
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps(tiny_run_config(tiny_dir, data, tmp_path / name, **settings_)))
        env = {**cli_env(tiny_dir, interrupted_cache()), "XLA_FLAGS": ""}
        argv = [sys.executable, "-m", "embeddinggemma.cli", "train", "--config", str(config), *extra]
        with log.open("w") as f:
            return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)

    straight = start("straight")  # the uninterrupted run
    assert straight.wait(timeout=600) == 0, log.read_text()
    _, expected = final_state(tmp_path / "straight")

    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"

    def logged() -> int:
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    def check() -> None:
        if (out / "checkpoints").exists() and any(p.name.isdigit() for p in (out / "checkpoints").iterdir()):
            step, _ = final_state(out)  # every 4 steps, or where SIGTERM stopped it
            assert 1 <= step <= 16, step
        if (out / "export").exists():
            EmbeddingGemma.from_pretrained(out / "export")

    for sig, extra in ((signal.SIGKILL, ()), (signal.SIGTERM, ("--resume",))):
        before = logged()
        proc = start("run", *extra)
        interrupt(proc, lambda before=before: logged() > before, rng.uniform(0.0, 1.0), sig)
        assert proc.returncode in (0, -sig, PREEMPTED), log.read_text()  # 143: saved, then stopped
        check()
    if not (out / "export").exists():  # else the run had completed before the signal
        assert start("run", "--resume").wait(timeout=600) == 0, log.read_text()
    check()
    step, state = final_state(out)
    assert step == 16
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 17))
    for a, b in zip(leaves(state["params"]), leaves(expected["params"]), strict=True):
        np.testing.assert_array_equal(a, b)

    # A damaged newest checkpoint: --resume names it in its last line, no traceback (before: orbax's bare
    # Exception with pages of TensorStore spec), and says how to go on from the one before.
    newest = out / "checkpoints" / "16"
    chunk = max((newest / "state").rglob("d/*"), key=lambda f: f.stat().st_size)
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    assert start("run", "--resume", "--overwrite").wait(timeout=600) == 1
    lines = log.read_text().strip().splitlines()
    assert "Traceback" not in log.read_text(), lines[-20:]
    assert lines[-1].startswith(f"embeddinggemma train: error: {newest}: cannot restore this checkpoint"), lines[-1]
    assert "move it out of" in lines[-1]
