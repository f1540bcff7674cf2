"""Output paths: a symlink loop or a broken link is refused up front, by name; the partial writes of a killed
process are swept by the next write."""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import pytest

from embeddinggemma.errors import OutputError
from embeddinggemma.files import atomic_dir, check_outputs, write_atomic


@pytest.fixture
def links(tmp_path: Path) -> Path:
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere" / "x.npy")
    (tmp_path / "input.txt").write_text("a text\n")
    return tmp_path


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("loop1", r"--output .*loop1 is a symbolic link to nothing \(broken, or a loop\)"),
        ("broken", r"--output .*broken is a symbolic link to nothing"),
        ("loop1/x.npy", r"cannot write --output .*loop1/x\.npy: .*loop1 is a symbolic link to nothing"),
        ("loop1/sub/x.npy", r"cannot write --output .*: .*loop1 is a symbolic link to nothing"),
    ],
)
def test_an_output_through_a_bad_link_is_refused(links: Path, output: str, message: str) -> None:
    with pytest.raises(OutputError, match=message):
        check_outputs({"--output": links / output}, [links / "input.txt"])


def test_an_input_that_is_a_loop_does_not_break_the_check(links: Path) -> None:
    check_outputs({"--output": links / "out.npy"}, [links / "loop1"])  # the reader names the input, not this check
    with pytest.raises(OutputError, match="is also an input"):
        check_outputs({"--output": links / "loop1"}, [links / "loop1"])


def _partial(dest: Path, host: str, pid: int) -> Path:
    path = dest.parent / f".{dest.name}.partial-{host}-{pid}-0123abcd"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"half a file")
    return path


@pytest.mark.parametrize("write", ["file", "directory"])
def test_partials_of_dead_writers_on_this_host_are_swept_saying_so(tmp_path: Path, caplog, write: str) -> None:
    """kill -9 during a write leaves `.NAME.partial-HOST-PID-*`: the next write of NAME removes it, but not a
    live process's (a concurrent writer) nor another host's (its pid means nothing here)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        dest = tmp_path / "export"
        stale = _partial(dest, socket.gethostname(), dead.pid)
        running = _partial(dest, socket.gethostname(), live.pid)
        remote = _partial(dest, "another-host", dead.pid)
        other_name = _partial(tmp_path / "exports", socket.gethostname(), dead.pid)
        with caplog.at_level(logging.WARNING, logger="embeddinggemma.files"):
            if write == "file":
                write_atomic(dest, lambda f: f.write(b"done"))
            else:
                with atomic_dir(dest) as tmp:
                    (tmp / "done").write_text("done")
        assert not stale.exists() and running.exists() and remote.exists() and other_name.exists()
        assert f"removed 1 partial write(s) of {dest} left by an interrupted run: {stale.name}" in caplog.text
    finally:
        live.kill()
        live.wait()
