"""`embeddinggemma benchmark`: its workloads have the token counts it claims, and one run of it on the tiny
checkpoint reports both frameworks on the same texts and keeps going past a backend that fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from embeddinggemma import benchmark, cli


def test_workload_texts_have_the_stated_token_counts(tiny_dir: Path):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    texts = benchmark.make_texts(str(tiny_dir), scale=2)
    assert texts == benchmark.make_texts(str(tiny_dir), scale=2)  # deterministic
    longest_word = max(len(sp.encode(w)) for w in benchmark._WORDS)  # texts are cut between words
    for name, (count, lo, hi) in benchmark.WORKLOADS.items():
        assert len(texts[name]) == 2 * count
        lengths = [len(sp.encode(t)) + 2 for t in texts[name]]  # + <bos>, <eos>
        assert max(lengths) <= hi
        assert min(lengths) > lo - longest_word, name


def test_benchmark_compares_both_frameworks_and_reports_a_failing_backend(tiny_dir: Path, capsys):
    argv = ["benchmark", "--model", str(tiny_dir), "--only", "short", "--repeats", "1", "--peak-tflops", "1"]
    assert cli.main([*argv, "--attention", "blocked,no_such_backend"]) == 0
    out = capsys.readouterr().out
    assert "ours with attention=no_such_backend failed" in out
    assert "unknown attention implementation 'no_such_backend'" in out
    header = next(line for line in out.splitlines() if line.startswith("| workload"))
    row = next(line for line in out.splitlines() if line.startswith("| short") and "| blocked |" in line)
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    cells = dict(zip(split(header), split(row), strict=True))
    ours, ref = (float(cells[k].replace(",", "")) for k in ("ours tok/s", "ST tok/s"))
    assert ours > 0 and ref > 0
    # the ratio is of the unrounded speeds; the printed ones are rounded to whole tokens/s
    assert float(cells["ratio"].removesuffix("x")) == pytest.approx(ours / ref, rel=1 / min(ours, ref), abs=0.01)
    assert float(cells["max cos diff"]) <= 1e-5  # both sides embedded the same texts, float32


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
