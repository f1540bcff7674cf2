"""Fault injection and in-process command runs: a full disk, signals at random points, damaged files,
hypothesis settings for the fuzzed tests.

The error policy these serve: a failure a user can cause is one line on stderr naming the thing and exit
status 1 (2 for usage errors), never a traceback; in the API a ValueError / TypeError / OSError naming it.
Outputs are written atomically, so a corrupt checkpoint file, a full disk, kill -9 or SIGTERM at any point
leaves either no output or a complete one, and rerunning the command succeeds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from embeddinggemma import EmbeddingGemma, cli

PROBE = ["The quick brown fox.", "Paris is the capital of France.", "def f(x): return x"]
ARG_NAMES = ("texts", "prompt", "truncate_dim", "batch_size")
# ROBUSTNESS_EXAMPLES=500 fuzzes deeper (and ROBUSTNESS_RANDOM=1 with fresh examples each run).
FUZZ = settings(
    max_examples=int(os.environ.get("ROBUSTNESS_EXAMPLES", 30)),
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    derandomize=not os.environ.get("ROBUSTNESS_RANDOM"),  # by default the same examples each run: CI is stable
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`embeddinggemma ARGV` in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's usage errors
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def leaves(tree_or_model: Any) -> list[np.ndarray]:
    """The parameters (of a model, or any tree of arrays) as host arrays, in tree order."""
    import jax

    tree = tree_or_model.params if isinstance(tree_or_model, EmbeddingGemma) else tree_or_model
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


class FullDisk:
    """`open` for `files.write_atomic` on a disk with `room` bytes left: a write past it stores what fits
    and raises ENOSPC, as write(2) does. `written` records each file's size (to size `room` from a clean run)."""

    def __init__(self, room: float = float("inf")):
        self.room, self.written = room, {}

    def __call__(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 (the proxy closes it)
        return self._Proxy(f, self, Path(path).name) if set(mode) & set("wxa") else f

    class _Proxy:
        def __init__(self, f: Any, disk: FullDisk, name: str):
            self._f, self._disk, self._name = f, disk, name

        def write(self, data: Any) -> int:
            n = memoryview(data).nbytes
            if n > self._disk.room:
                self._f.write(memoryview(data).cast("B")[: int(self._disk.room)])
                self._disk.room = 0
                raise OSError(28, os.strerror(28))  # ENOSPC, with no file name, as from write(2)
            self._disk.room -= n
            self._disk.written[self._name] = self._disk.written.get(self._name, 0) + n
            return self._f.write(data)

        def writelines(self, lines: Any) -> None:
            for line in lines:
                self.write(line)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

        def __enter__(self) -> FullDisk._Proxy:
            return self

        def __exit__(self, *exc: Any) -> None:
            self._f.close()


def limited_file_size(limit: int, *argv: str) -> list[str]:
    """`argv` run with no file allowed to grow past `limit` bytes (RLIMIT_FSIZE), a write past it failing with
    EFBIG instead of the default SIGXFSZ kill: what a full disk looks like to every writer, C++ and Rust ones
    too. (A preexec_fn would fork this multithreaded process; a small launcher sets both, then execs.)"""
    launch = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", launch, *argv]


def interrupt(proc: subprocess.Popen, ready: Callable[[], bool], delay: float, sig: int, timeout: float = 240) -> bool:
    """Once `ready()` (or the process ended), wait `delay` seconds and send `sig`; wait for the process.
    Returns whether the signal found it still running (False: it had finished on its own)."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    running = proc.poll() is None
    if running:
        proc.send_signal(sig)
    proc.wait(timeout=400)
    return running
