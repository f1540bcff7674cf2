"""A run's output_dir: a local directory (or `file://` URL), or a `gs://` URL.

Checkpoints go to it directly through orbax, which supports both: on GCS, where there is no atomic rename,
it marks each finished step with a `commit_success.txt` and ignores steps without one. Everything else
(train_config.json, metrics.jsonl, tensorboard/, profile/, export/) is written by ordinary local code into
`local`: the directory itself, or for a URL a staging directory whose files are uploaded as they change.
An uploaded export ends with its own `commit_success.txt` (the same convention): it is complete only when
that file is there. A failed upload keeps the staging directory and names it, so the export is not lost.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from embeddinggemma.errors import OutputError

COMMIT_MARKER = "commit_success.txt"  # orbax's name for "this directory is complete" on object stores


class OutputDir:
    """Where a run writes (see the module docstring). `local` is where files are written; `publish(name)`
    uploads one of them when output_dir is a URL (a no-op otherwise)."""

    def __init__(self, spec: str | Path):
        spec = str(spec).removeprefix("file://")
        self.spec = spec
        self.remote = "://" in spec
        self.fs: Any = None
        self._staging: Path | None = None
        if not self.remote:
            self.local = Path(spec)
            return
        if not spec.startswith("gs://"):
            raise OutputError(
                f"output_dir {spec}: outputs go to a local path, a file:// URL or a gs:// URL (orbax writes "
                "checkpoints through TensorStore, which supports those)"
            )
        try:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(spec)
        except ImportError as e:
            raise ImportError(f"output_dir {spec} needs gcsfs: pip install 'embeddinggemma-jax[data,gcs]'") from e
        self.root = self.root.rstrip("/")
        self.local = Path(tempfile.mkdtemp(prefix="embeddinggemma-run-"))
        self._staging = self.local

    def url(self, name: str) -> str:
        return f"{self.spec.rstrip('/')}/{name}" if self.remote else str(self.local / name)

    def _remote(self, name: str) -> str:
        return f"{self.root}/{name}"

    def is_file(self) -> bool:
        return self.fs.isfile(self.root) if self.remote else self.local.is_file()

    def exists(self, name: str) -> bool:
        if not self.remote:
            return (self.local / name).exists()
        self.fs.invalidate_cache()  # fsspec caches listings: other hosts and earlier runs write here too
        return self.fs.exists(self._remote(name))

    def remove(self, name: str) -> None:
        """Delete an earlier run's file or directory (--overwrite)."""
        if self.remote:
            self.fs.rm(self._remote(name), recursive=True)
        else:
            path = self.local / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def checkpoints(self) -> str:
        """Where orbax keeps the checkpoints: an absolute local path or the URL."""
        return self.url("checkpoints") if self.remote else str((self.local / "checkpoints").absolute())

    def fetch(self, name: str) -> None:
        """Download an earlier run's file into `local`, to be continued (a resumed run's metrics.jsonl)."""
        if self.remote and self.exists(name):
            self.fs.get_file(self._remote(name), str(self.local / name))

    def publish(self, name: str) -> None:
        """Upload `local / name` (a file, or a directory's new and changed files) when output_dir is a URL."""
        path = self.local / name
        if not self.remote or not path.exists():
            return
        if path.is_dir():
            self.fs.put(f"{path}/", self._remote(name), recursive=True)
        else:
            self.fs.put_file(str(path), self._remote(name))

    def publish_export(self, name: str = "export") -> str:
        """Upload a complete export, replacing the earlier one, and mark it complete; its URL or path.

        The earlier export's marker goes first and the new one's comes last, so no state in between looks
        complete. On a failure the local copy is kept and named."""
        if not self.remote:
            return str(self.local / name)
        try:
            marker = f"{name}/{COMMIT_MARKER}"
            if self.exists(marker):
                self.fs.rm(self._remote(marker))
            if self.exists(name):
                self.fs.rm(self._remote(name), recursive=True)
            self.publish(name)
            self.fs.pipe_file(self._remote(marker), b"")
        except Exception as e:
            self._staging = None  # keep it: it holds the only complete copy
            raise OSError(
                f"uploading the export to {self.url(name)} failed ({e}); the complete export is in "
                f"{self.local / name}: copy it with `gcloud storage cp -r {self.local / name} {self.url(name)}`"
            ) from e
        return self.url(name)

    def close(self) -> None:
        """Remove the staging directory of a URL output_dir (everything in it has been uploaded)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
