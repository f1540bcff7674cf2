"""Multi-process ("multi-host") JAX on one machine: 2 CPU processes x 4 devices joined by
jax.distributed (gloo collectives) give the same embeddings and the same fine-tuned parameters as one
process with 8 devices. This is the code path of a multi-host TPU slice: per-process parameter
placement, every host feeding only its rows (make_array_from_process_local_data), orbax writing one
checkpoint from several processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from embeddinggemma import EmbeddingGemma, TrainConfig, train
from tests.helpers import ROOT
from tests.helpers.multihost_worker import MESH, TEXTS
from tests.helpers.retrieval import write_split
from tests.helpers.train import as_parquet, final_state, tiny_run_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


STEPS = 10


def _train_config(tiny_dir: Path, data: tuple[Path, Path], out: Path) -> dict:
    return tiny_run_config(
        tiny_dir, data, out, eval_file=None, mesh=MESH, steps=STEPS, save_every=1000, log_every=1, export=False
    )


def test_two_processes_match_one(tiny_dir, tmp_path):
    """Trained from Parquet; SIGTERM to one process stops both at the same step, and the resumed run
    ends where an uninterrupted single-process one does."""
    train_file, eval_file = write_split(tmp_path / "data")
    data = (as_parquet(train_file), eval_file)
    cfg_path = tmp_path / "multi.json"
    cfg_path.write_text(json.dumps(_train_config(tiny_dir, data, tmp_path / "multi")))
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(pid),
        }
        cmd = [sys.executable, "-m", "tests.helpers.multihost_worker", str(tiny_dir), str(cfg_path), str(tmp_path)]
        with open(tmp_path / f"log{pid}.txt", "w") as log:  # a file, not a pipe: a full pipe stalls the job
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    metrics = tmp_path / "multi" / "metrics.jsonl"
    deadline = time.time() + 400
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    procs[0].send_signal(signal.SIGTERM)  # a preempted host: only one of them is told
    for pid, p in enumerate(procs):
        p.wait(timeout=600)
        assert p.returncode == 0, (tmp_path / f"log{pid}.txt").read_text()[-3000:]

    assert jax.device_count() == 8  # the reference: this process, one host with 8 devices
    single = EmbeddingGemma.from_pretrained(tiny_dir, mesh=MESH).encode(TEXTS)
    for pid in range(2):  # every process gets all embeddings (replicated output)
        np.testing.assert_allclose(np.load(tmp_path / f"embeddings{pid}.npy"), single, atol=1e-6)

    reference = train(TrainConfig.from_dict(_train_config(tiny_dir, data, tmp_path / "single")))
    assert reference["status"] == "completed"
    (stop0, end0), (stop1, end1) = (json.loads((tmp_path / f"result{pid}.json").read_text()) for pid in range(2))
    assert stop0["status"] == stop1["status"] == "preempted"
    assert stop0["step"] == stop1["step"] and 2 <= stop0["step"] < STEPS, (stop0, stop1)
    assert end0["step"] == end1["step"] == STEPS and end0["status"] == "completed"
    assert "eval_start" not in end0  # the second run resumed (a fresh one evaluates first)
    step_single, ref = final_state(tmp_path / "single")
    step_multi, multi = final_state(tmp_path / "multi", like=ref)
    assert step_multi == step_single == STEPS and int(multi["step"]) == STEPS
    flat_multi, flat_ref = jax.tree.leaves(multi["params"]), jax.tree.leaves(ref["params"])
    assert len(flat_multi) == len(flat_ref) > 0
    for a, b in zip(flat_multi, flat_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
