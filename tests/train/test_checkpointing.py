"""A checkpoint save that fails in orbax's background threads (a full disk) ends in one CheckpointError naming
the step's directory, not in the hundreds of lines of tracebacks those threads log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.faults import limited_file_size


def _save(directory: Path, limit: int | None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "tests.helpers.save_checkpoint", str(directory)]
    return subprocess.run(
        limited_file_size(limit, *argv) if limit else argv,
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_a_failed_save_is_one_error_and_no_noise_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    proc = _save(directory, limit=200_000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"CheckpointError: {directory / '1'}: cannot save this checkpoint (")
    assert "File too large" in proc.stdout
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) <= 2, proc.stderr  # at most JAX's own start-up line
    assert [p.name for p in directory.iterdir()] == ["1.orbax-checkpoint-tmp"]  # what the failed save left

    proc = _save(directory, limit=None)  # the next run, with room: saves, and removes the leftover
    assert proc.returncode == 0 and proc.stdout == "saved\n", proc.stdout + proc.stderr[-3000:]
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]
