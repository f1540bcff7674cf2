"""Writing outputs without losing data: atomic files and directories, and output paths checked up front.

Every output is written under a temporary sibling name and renamed into place when complete, so an
interrupted write never leaves something that looks finished. Temporary names are created with plain
`open`/`mkdir`, so what lands follows the user's umask (tempfile's would be private, 0600/0700).
"""

from __future__ import annotations

import glob
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from embeddinggemma.errors import OutputError

log = logging.getLogger(__name__)


def cache_dir(kind: str, env: str) -> Path:
    """Where a cache of `kind` lives: $`env`, else embeddinggemma/`kind` under the user's cache directory."""
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "embeddinggemma" / kind


def _sibling(dest: Path, tag: str) -> Path:
    """A hidden name beside `dest` that says who made it (host, pid), so a later writer knows it is stale."""
    return dest.parent / f".{dest.name}.{tag}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists: another user's process
        pass
    return True


def sweep_partials(dest: Path) -> list[Path]:
    """Remove the partial writes of `dest` left by processes of this host that died (kill -9, power loss),
    saying so; a live writer's partial, or another host's, is left alone. Returns what was removed."""
    removed = []
    prefix = f".{dest.name}.partial-{socket.gethostname()}-"
    for path in dest.parent.glob(glob.escape(prefix) + "*") if dest.parent.is_dir() else ():
        pid = path.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
    if removed:
        log.warning(
            "removed %d partial write(s) of %s left by an interrupted run: %s",
            len(removed),
            dest,
            ", ".join(p.name for p in removed),
        )
    return removed


def write_atomic(dest: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through a temporary sibling (flushed to disk), then rename it over `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(dest)
    tmp = _sibling(dest, "partial")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        cause = _cause(e, tmp)
        tmp.unlink(missing_ok=True)
        if cause.filename is None:  # a failed write() (disk full, file size limit) names no file: name dest
            raise OSError(cause.errno, cause.strerror or str(cause), str(dest)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _cause(e: OSError, tmp: Path) -> OSError:
    """What a short write that names no error was: numpy's np.save writes through C and reports a full disk
    as "[Errno None] 4800 requested and 4064 written". Writing on at the end of `tmp` (deleted next) meets
    the real error (no space left on device, file too large, quota); `e` when none is met within 1 MiB."""
    if e.errno is not None or not tmp.is_file():
        return e
    try:
        with open(tmp, "ab", buffering=0) as f:  # unbuffered: each write(2) reports its own error
            for _ in range(16):
                f.write(bytes(1 << 16))
    except OSError as cause:
        return cause
    return e


@contextmanager
def atomic_dir(dest: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; it becomes `dest` when the block completes.

    An existing `dest` is an error unless `replace`; then it is swapped out only once the new directory
    is complete, so a failed write leaves the old one intact.
    """
    dest = Path(dest)
    if not replace:
        check_new_dir(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(dest)
    tmp = _sibling(dest, "partial")
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            old = _sibling(dest, "old")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_new_dir(dest: str | Path, *, inputs: Iterable[str | Path] = ()) -> None:
    """An output directory must not exist yet (we never write into or over one a user has), nor lie inside
    an input directory (it would change the input, and be read as part of it next time)."""
    if Path(dest).exists():
        raise OutputError(f"{dest} already exists; choose a new output directory")
    for src in map(Path, inputs):
        if src.is_dir() and Path(os.path.realpath(dest)).is_relative_to(os.path.realpath(src)):
            raise OutputError(f"{dest} is inside the input directory {src}; choose an output directory outside it")


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (through symlinks and hard links too)."""
    if os.path.realpath(a) == os.path.realpath(b):  # realpath, unlike resolve(), never raises on a loop
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(
    outputs: dict[str, str | Path | None], inputs: Iterable[str | Path], *, overwrite: bool = False
) -> None:
    """Refuse, before any work starts, outputs that would destroy data or cannot be written.

    `outputs` maps an option name (for the message) to a path or None (not requested). Each output
    must differ from every input and from the other outputs, must not exist unless `overwrite`, and
    its directory must be creatable and writable. Nothing is created here.
    """
    given = {name: Path(p) for name, p in outputs.items() if p is not None}
    for name, out in given.items():
        for src in map(Path, inputs):
            if _same(out, src):
                raise OutputError(f"{name} {out} is also an input; writing it would destroy the input")
        for other, path in given.items():
            if other < name and _same(out, path):
                raise OutputError(f"{other} and {name} are the same file ({out})")
        if os.path.lexists(out) and not out.exists():  # exists() follows links: a broken link or a loop
            raise OutputError(
                f"{name} {out} is a symbolic link to nothing (broken, or a loop); remove it or choose another path"
            )
        if out.is_dir():
            raise OutputError(f"{name} {out} is a directory; give a file name such as {out / 'out.npy'}")
        if out.exists() and not overwrite:
            raise OutputError(f"{name} {out} already exists; pass --overwrite to replace it")
        ancestor = out.parent  # the directory will be created when written: its nearest existing ancestor
        while not ancestor.exists():  # must be a writable directory
            if os.path.lexists(ancestor):
                raise OutputError(
                    f"cannot write {name} {out}: {ancestor} is a symbolic link to nothing (broken, or a loop)"
                )
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OutputError(f"cannot write {name} {out}: {ancestor} is not a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {name} {out}: {ancestor} is not writable")
