"""`encode` on a full disk, killed or terminated at random points: no partial output, and the rerun resumes
to the clean run's output bit for bit."""

from __future__ import annotations

import contextlib
import json
import random
import resource
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma import files
from tests.helpers.cli import SCRIPT, assert_one_line_error, cli_env, interrupted_cache, no_partials
from tests.helpers.faults import (
    FullDisk,
    interrupt,
    run_main,
)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 short JSONL documents: 5 shards of 8."""
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    rows = [{"id": f"doc{i}", "text": f"document {i} is about topic {i % 7}"} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["writing a shard", "assembling the output"])
def test_encode_on_a_full_disk_fails_cleanly_and_resumes(
    where: str, cli_in_process: None, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """ENOSPC mid-encode: exit 1 with one line naming the file, no output under its final name and no
    temporary left; the rerun, with room again, resumes and writes exactly the clean run's output (before,
    an --ids-output written just before the failed output made every rerun refuse to start)."""

    def argv(out: Path) -> list[str]:
        return ["encode", "-i", str(docs), "-o", str(out), "--ids-output", str(out.with_suffix(".ids.jsonl")),
                "--shard-size", "8", "--no-progress"]  # fmt: skip

    sizes = FullDisk()
    monkeypatch.setattr(files, "open", sizes, raising=False)
    clean = tmp_path / "clean" / "emb.npy"
    assert run_main(argv(clean), capsys)[0] == 0
    shards = sorted(name for name in sizes.written if name.startswith(".shard-"))
    before_final = sum(n for name, n in sizes.written.items() if not name.startswith(".emb.npy"))
    room = sizes.written[shards[0]] * 2.5 if where == "writing a shard" else before_final + 100

    out = tmp_path / "full" / "emb.npy"
    monkeypatch.setattr(files, "open", FullDisk(room), raising=False)
    status, _, err = run_main(argv(out), capsys)
    assert status == 1
    assert_one_line_error(err, "encode", "No space left on device")
    assert ("shard-000002.npy" if where == "writing a shard" else str(out)) in err
    assert not out.exists() and not no_partials(out.parent) and not no_partials(out.parent / "emb.npy.partial")

    monkeypatch.setattr(files, "open", open, raising=False)
    status, _, err = run_main(argv(out), capsys)
    assert status == 0, err
    assert f"resuming: {2 if where == 'writing a shard' else 5} of 5 shards already done" in err
    np.testing.assert_array_equal(np.load(out), np.load(clean))
    assert out.with_suffix(".ids.jsonl").read_text() == clean.with_suffix(".ids.jsonl").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["emb.ids.jsonl", "emb.npy"]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE on this process for a moment: a write past `limit` bytes fails with EFBIG (Python ignores
    SIGXFSZ), in C code as in Python."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_short_write_without_an_error_is_named_by_its_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """np.save writes through C and reports a full disk as "[Errno None] 4800 requested and 4064 written":
    the error names the real cause and the file, here past a file size limit and on a full disk."""
    shard = tmp_path / "shard-000002.npy"
    with file_size_limit(4064), pytest.raises(OSError) as raised:
        files.write_atomic(shard, lambda f: np.save(f, np.zeros(600)))  # 4,928 bytes
    assert (raised.value.errno, raised.value.strerror, raised.value.filename) == (27, "File too large", str(shard))

    def numpy_on_a_full_disk(f) -> None:  # what np.save's C write does: store what fits, report no errno
        try:
            f.write(bytes(4800))
        except OSError:
            raise OSError("4800 requested and 4064 written") from None

    monkeypatch.setattr(files, "open", FullDisk(room=4064), raising=False)
    with pytest.raises(OSError) as raised:
        files.write_atomic(shard, numpy_on_a_full_disk)
    assert str(raised.value) == f"[Errno 28] No space left on device: '{shard}'"
    assert not list(tmp_path.iterdir()), "no partial file is left"


@pytest.fixture(scope="module")
def many_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 similar documents: 50 shards of 8, one compiled shape, so the run is long enough to interrupt."""
    path = tmp_path_factory.mktemp("many") / "docs.jsonl"
    rows = [{"id": i, "text": f"document {i} is about topic {i % 17} and item {i * 7 % 13}"} for i in range(400)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_encode_killed_or_terminated_anywhere_resumes_exactly(
    cli_in_process: None, tiny_dir: Path, many_docs: Path, tmp_path: Path, capsys
) -> None:
    """kill -9, then SIGTERM, at seeded random points of an encode: every finished shard on disk holds
    exactly the clean run's rows, the output is absent (or complete), and the rerun resumes to the clean
    output bit for bit."""
    rng = random.Random(6)

    def encode_argv(directory: Path) -> list[str]:
        return ["encode", "-i", str(many_docs), "-o", str(directory / "emb.npy"), "--ids-output",
                str(directory / "ids.jsonl"), "--shard-size", "8", "--batch-size", "8", "--no-progress"]  # fmt: skip

    argv, out, work = encode_argv(tmp_path), tmp_path / "emb.npy", tmp_path / "emb.npy.partial"
    t0 = time.perf_counter()
    assert run_main(encode_argv(tmp_path / "clean"), capsys)[0] == 0
    duration = time.perf_counter() - t0  # the time scale of the random points, so they fall mid-run
    clean = np.load(tmp_path / "clean" / "emb.npy")
    env = cli_env(tiny_dir, interrupted_cache())

    def check() -> None:
        for shard in work.glob("shard-*.npy"):
            index = int(shard.stem.removeprefix("shard-"))
            np.testing.assert_array_equal(np.load(shard), clean[8 * index : 8 * index + 8], err_msg=shard.name)
        if out.exists():
            np.testing.assert_array_equal(np.load(out), clean)

    for sig in (signal.SIGKILL, signal.SIGTERM):
        before = len(list(work.glob("shard-*.npy")))
        proc = subprocess.Popen([str(SCRIPT), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        more = lambda before=before: len(list(work.glob("shard-*.npy"))) > before  # noqa: E731 (a shard of this run)
        interrupt(proc, more, rng.uniform(0.0, 0.5 * duration), sig)
        check()
        if out.exists():
            break
    if not out.exists():
        status, _, err = run_main(argv, capsys)
        assert status == 0, err
    check()
    assert out.exists() and not work.exists()
    assert (tmp_path / "ids.jsonl").read_text() == (tmp_path / "clean" / "ids.jsonl").read_text()
