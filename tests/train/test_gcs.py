"""Training with data and output_dir on GCS, against a local GCS emulator (gcp-storage-emulator): gcsfs and
TensorStore speak the same JSON API to it as to storage.googleapis.com, so orbax's checkpoints, the
uploads and the resume run the code paths they run on a Cloud TPU VM."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import pytest

from embeddinggemma import TrainConfig, checkpoint, train
from embeddinggemma.errors import CheckpointError, OutputError
from embeddinggemma.files import cache_dir
from embeddinggemma.train.checkpointing import RunCheckpoints
from embeddinggemma.train.outputs import COMMIT_MARKER, OutputDir
from tests.helpers import ROOT
from tests.helpers.retrieval import write_split
from tests.helpers.train import tiny_run_config

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

BUCKET = "runs"


@pytest.fixture(scope="module")
def gcs() -> Iterator[object]:
    """A GCS emulator with one bucket; gcsfs (fsspec) and TensorStore (orbax) pointed at it."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.gcs_emulator", str(port), BUCKET],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the GCS emulator did not start") from None
            time.sleep(0.1)
    import fsspec
    import gcsfs

    address = f"http://localhost:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STORAGE_EMULATOR_HOST", address)
        env.setenv("TENSORSTORE_GCS_HTTP_URL", address)
        gcsfs.GCSFileSystem.clear_instance_cache()  # one made for another emulator would keep its address
        try:
            yield fsspec.filesystem("gs")
        finally:
            server.kill()
            server.wait()
            gcsfs.GCSFileSystem.clear_instance_cache()


def _params(url: str, step: int) -> dict:
    """The trained parameters in a run's checkpoint, read back from the bucket."""
    import orbax.checkpoint as ocp

    ckpts = RunCheckpoints(url, keep=10)
    try:
        restored = ckpts.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(None)))
    finally:
        ckpts.close()
    return restored["state"]["params"]


def _metrics(gcs, path: str) -> list[dict]:
    return [json.loads(line) for line in gcs.cat_file(path).splitlines()]


def test_train_with_data_and_output_dir_on_gcs(
    gcs, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run reads its data from gs:// and writes everything to gs://; a run preempted after step 2 resumes
    from the bucket to the same parameters, metrics and export, byte for byte. The export loads from gs://."""
    monkeypatch.setenv("EMBEDDINGGEMMA_MODEL_CACHE", str(tmp_path / "models"))
    train_file, _ = write_split(tmp_path)
    gcs.put_file(str(train_file), f"{BUCKET}/data/train.jsonl")
    url = f"gs://{BUCKET}/run"
    overrides = {"steps": 4, "save_every": 2, "log_every": 2, "keep_checkpoints": 3, "eval_file": None}
    cfg = TrainConfig.from_dict(
        tiny_run_config(tiny_dir, (f"gs://{BUCKET}/data/train.jsonl", tmp_path), url, **overrides)  # type: ignore[arg-type]
    )
    first = train(cfg)
    assert first["status"] == "completed" and first["export"] == f"{url}/export"
    root = f"{BUCKET}/run"
    assert gcs.isfile(f"{root}/train_config.json")
    assert gcs.isfile(f"{root}/checkpoints/2/{COMMIT_MARKER}") and gcs.isfile(f"{root}/checkpoints/4/{COMMIT_MARKER}")
    assert gcs.isfile(f"{root}/export/{COMMIT_MARKER}") and gcs.isfile(f"{root}/export/model.safetensors")
    export = {p.removeprefix(f"{root}/export/"): gcs.cat_file(p) for p in gcs.find(f"{root}/export")}
    losses = {row["step"]: row["loss"] for row in _metrics(gcs, f"{root}/metrics.jsonl")}
    assert sorted(losses) == [2, 4] and all(np.isfinite(list(losses.values())))
    params = _params(f"{url}/checkpoints", 4)
    _check_loads_from_the_bucket(gcs, f"{url}/export", tmp_path / "export-copy")

    gcs.rm(f"{root}/checkpoints/4", recursive=True)  # as if preempted after step 2's checkpoint
    for fs in type(gcs)._cache.values():  # the listings this process cached (orbax's epath has its own
        fs.invalidate_cache()  # gcsfs instance): the new process of a real resume has none
    with pytest.raises(OutputError, match=f"{url}/export exists"):
        train(cfg, resume=True)  # the resumed run would replace the export
    second = train(cfg, resume=True, overwrite=True)
    assert second["status"] == "completed"
    resumed = _metrics(gcs, f"{root}/metrics.jsonl")
    assert [row["step"] for row in resumed] == [2, 4]  # continued after step 2, step 4's row once
    assert resumed[-1]["loss"] == losses[4]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(_params(f"{url}/checkpoints", 4)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert {p.removeprefix(f"{root}/export/"): gcs.cat_file(p) for p in gcs.find(f"{root}/export")} == export
    assert _copies() == 1
    checkpoint.load(f"{url}/export")  # the export's files are new objects (new generations): copied again
    assert _copies() == 2


def _copies() -> int:
    return len(list(cache_dir("models", "EMBEDDINGGEMMA_MODEL_CACHE").iterdir()))


def _check_loads_from_the_bucket(gcs, url: str, copy: Path) -> None:
    """A checkpoint on gs:// loads as its local copy does, and is copied from the bucket once."""
    gcs.get(url.removeprefix("gs://") + "/", str(copy), recursive=True)
    local = checkpoint.load(copy)
    for _ in range(2):
        remote = checkpoint.load(url)
        assert remote.config == local.config
        for a, b in zip(jax.tree.leaves(remote.params), jax.tree.leaves(local.params), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _copies() == 1


def test_a_failed_export_upload_keeps_the_local_copy(gcs, monkeypatch: pytest.MonkeyPatch) -> None:
    out = OutputDir(f"gs://{BUCKET}/failing")
    (out.local / "export").mkdir()
    (out.local / "export" / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(out.fs, "put", lambda *a, **k: (_ for _ in ()).throw(OSError("quota exceeded")))
    with pytest.raises(OSError, match=f"quota exceeded.*the complete export is in {out.local / 'export'}"):
        out.publish_export()
    out.close()
    assert (out.local / "export" / "model.safetensors").read_bytes() == b"weights"
    assert not gcs.exists(f"{BUCKET}/failing/export/{COMMIT_MARKER}")


@pytest.mark.parametrize("url", ["memory://run", "s3://bucket/run"])
def test_other_remote_output_dirs_are_refused_by_name(url: str) -> None:
    with pytest.raises(OutputError, match=f"output_dir {url}: outputs go to a local path, a file:// URL or a gs://"):
        OutputDir(url)


def test_a_missing_checkpoint_url_is_named(gcs) -> None:
    with pytest.raises(CheckpointError, match=f"gs://{BUCKET}/nothing: no such checkpoint directory"):
        checkpoint.load(f"gs://{BUCKET}/nothing")
