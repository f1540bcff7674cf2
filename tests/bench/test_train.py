"""`embeddinggemma benchmark-train`: our trainer and sentence-transformers' on the same batches, one run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embeddinggemma import cli


def test_train_benchmark_runs_both_trainers_to_the_same_losses(tiny_dir: Path, capsys) -> None:
    """The two trainers see the same batches with the same loss, optimizer and schedule: their losses agree
    step by step (not only the first), and both report a speed."""
    assert cli.main(["benchmark-train", "--model", str(tiny_dir), "--steps", "4", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:] for line in out.splitlines() if line.startswith("| ")}
    losses = {side: [float(x) for x in rows[side][0].split(",")] for side in ("ours", "sentence-transformers")}
    assert len(losses["ours"]) == 3
    np.testing.assert_allclose(losses["ours"], losses["sentence-transformers"], rtol=1e-5)
    assert all(float(rows[side][2]) > 0 for side in losses)  # examples/s
    assert "ours / sentence-transformers: " in out
