"""`embeddinggemma benchmark`: its workloads have the token counts it claims, and one run of it on the tiny
checkpoint reports both frameworks on the same texts and keeps going past a backend that fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from embeddinggemma import cli
from embeddinggemma.bench import workloads


def test_workload_texts_have_the_stated_token_counts(tiny_dir: Path):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    texts = workloads.documents(tiny_dir, scale=2)
    assert texts == workloads.documents(tiny_dir, scale=2)  # deterministic
    longest_word = max(len(sp.encode(w)) for w in workloads.WORDS)  # texts are cut between words
    for name, (count, lo, hi) in workloads.ENCODE_WORKLOADS.items():
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
