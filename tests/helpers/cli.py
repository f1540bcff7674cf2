"""Running the `embeddinggemma` console script in a subprocess, and what its output must look like."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("embeddinggemma")


def shared_cache() -> Path:
    """The compilation cache the CLI subprocesses of the tests use: warm after a first run."""
    return Path(os.environ.get("PYTEST_CLI_CACHE", Path(tempfile.gettempdir()) / "eg-test-jax-cache"))


def interrupted_cache() -> Path:
    """The compilation cache of processes the tests kill, apart from the shared one: JAX writes a cache
    entry in place (not atomically), so a kill during a write leaves a truncated entry that every later
    process warns about. It persists too (a copy elsewhere would not do: the cache directory is part of
    every entry's key), so only a first run compiles the training step."""
    return shared_cache().with_name(shared_cache().name + "-interrupted")


def cli_env(model_dir: Path, cache: Path | None = None) -> dict[str, str]:
    """The CLI's environment: the tiny checkpoint, and a compilation cache of the test run's own."""
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "EMBEDDINGGEMMA_CHECKPOINT": str(model_dir),
        "EMBEDDINGGEMMA_COMPILATION_CACHE": str(cache or shared_cache()),
    }


def run_cli(
    model_dir: Path, *args: str | Path, ok: bool = True, cache: Path | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(SCRIPT), *map(str, args)], env=cli_env(model_dir, cache), capture_output=True, text=True, timeout=600
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def parse_hits(stdout: str) -> list[tuple[str, float]]:
    """(id or row, score) of each printed hit line `  rank  score  label`."""
    return [(m[2], float(m[1])) for m in re.finditer(r"^\s+\d+\s+(-?\d\.\d{3})\s+(\S+)", stdout, re.M)]


def assert_one_line_error(stderr: str, command: str, *names: str) -> str:
    """stderr is exactly `embeddinggemma COMMAND: error: ...` naming at least one of `names`."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embeddinggemma {command}: error: "), stderr
    assert not names or any(name in lines[0] for name in names), (names, lines[0])
    return lines[0]


def no_partials(directory: Path) -> list[str]:
    """Temporary siblings (`.NAME.partial-*`) left in `directory`: a failed write must remove its own."""
    return sorted(p.name for p in directory.glob(".*.partial-*"))
