"""`embeddinggemma mine` chooses the negatives sentence-transformers' `mine_hard_negatives` chooses on the same
model, writes them as a training input, and resumes an interrupted embedding."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from embeddinggemma.eval import mining
from embeddinggemma.eval.retrieval import TopK
from embeddinggemma.train.sources import Example, examples, open_rows
from tests.helpers.cli import SCRIPT, assert_one_line_error, cli_env, run_cli
from tests.helpers.retrieval import facts


def _pairs() -> list[Example]:
    """Question -> passage pairs; a few questions twice, with a second positive (several positives per query)."""
    rows = facts()[:60]
    pairs = [Example(q, p, (), None) for _, q, p in rows]
    return pairs + [Example(q, f"{p} This is a well-known fact.", (), None) for _, q, p in rows[:5]]


def _corpus() -> list[str]:
    return [p for _, _, p in facts()[60:]] + [p for _, _, p in facts()[:3]]  # duplicates of positives too


OPTIONS = [
    mining.MineOptions(num_negatives=3),
    mining.MineOptions(num_negatives=2, range_min=2, range_max=12, relative_margin=0.05),
    mining.MineOptions(num_negatives=4, absolute_margin=0.0, max_score=0.8, min_score=0.1),
]


@pytest.fixture(scope="module")
def mined_st(tiny_st):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    pairs = _pairs()
    data = Dataset.from_dict({"query": [p.query for p in pairs], "positive": [p.positive for p in pairs]})
    kwargs = [dict(vars(o)) for o in OPTIONS]
    for kw in kwargs:
        kw["sampling_strategy"] = kw.pop("sampling")
        del kw["seed"]
    return [
        mine_hard_negatives(data, tiny_st, corpus=_corpus(), output_format="n-tuple", verbose=False, **kw)
        for kw in kwargs
    ]


@pytest.fixture(scope="module")
def embedded(tiny_model, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text("\n".join(_corpus()) + "\n")
    job = mining.MineJob(_pairs(), tmp_path_factory.mktemp("out") / "mined.jsonl", corpus=corpus)
    prompts = tiny_model.prompts
    emb = job.embed(
        tiny_model, model_id="tiny", query_prompt=prompts["query"], document_prompt=prompts["document"], progress=False
    )
    return job, emb


@pytest.mark.parametrize("case", range(len(OPTIONS)))
def test_negatives_equal_sentence_transformers(embedded, mined_st, case):
    job, (query_emb, candidate_emb) = embedded
    ours = mining.mine(job.pairs, query_emb, candidate_emb, job.candidates, OPTIONS[case])
    theirs = mined_st[case]
    k = OPTIONS[case].num_negatives
    assert len(ours.queries) > 0 and (case == 0 or ours.short > 0)  # the limits bite
    assert ours.queries == theirs["query"] and ours.positives == theirs["positive"]
    assert ours.negatives == [list(row) for row in zip(*(theirs[f"negative_{j + 1}"] for j in range(k)), strict=True)]
    for row, positive in zip(ours.negatives, ours.positives, strict=True):
        assert positive not in row and not {p.positive for p in job.pairs if p.positive == positive} & set(row)


def test_random_sampling_keeps_the_window_and_the_limits(embedded):
    job, (query_emb, candidate_emb) = embedded
    top = mining.mine(job.pairs, query_emb, candidate_emb, job.candidates, mining.MineOptions(num_negatives=2))
    rand = mining.MineOptions(num_negatives=2, range_max=10, max_score=0.9, sampling="random", seed=1)
    picked = mining.mine(job.pairs, query_emb, candidate_emb, job.candidates, rand)
    assert picked.negatives != top.negatives
    assert (picked.negative_scores <= 0.9).all() and (np.diff(picked.negative_scores, axis=1) <= 0).all()


def test_output_is_a_training_input_in_jsonl_and_parquet(embedded, tmp_path):
    """Parquet has sentence-transformers' n-tuple columns (negative_1..K): read back, both give the same rows."""
    job, (query_emb, candidate_emb) = embedded
    result = mining.mine(job.pairs, query_emb, candidate_emb, job.candidates, mining.MineOptions(num_negatives=2))
    for name in ("mined.jsonl", "mined.parquet"):
        mining.write(result, tmp_path / name)
    jsonl, parquet = (list(examples(open_rows(tmp_path / name))) for name in ("mined.jsonl", "mined.parquet"))
    assert jsonl == parquet
    assert [(r.query, r.positive, list(r.negatives)) for r in jsonl] == list(
        zip(result.queries, result.positives, result.negatives, strict=True)
    )


def test_bad_options_are_refused_before_work():
    with pytest.raises(ValueError, match="range_min"):
        mining.MineOptions(range_min=5, range_max=5).window(1)
    with pytest.raises(ValueError, match="cannot mine 4 negatives"):
        mining.MineOptions(num_negatives=4, range_max=3).window(1)


def test_num_negatives_and_range_max_are_bounded_by_the_corpus(embedded, monkeypatch):
    """More negatives than the corpus holds is refused before the search sizes its buffers (1,000,000 passed
    3 GiB); a range_max past the corpus searches only the corpus."""
    job, (query_emb, candidate_emb) = embedded
    n = len(job.candidates)
    with pytest.raises(ValueError, match=f"cannot mine 1,000,000 negatives a row: the corpus has {n:,} candidates"):
        mining.MineOptions(num_negatives=1_000_000).window(1, n)
    with pytest.raises(ValueError, match=f"so at most {n - 6:,} remain after skipping range_min=5"):
        mining.MineOptions(num_negatives=n - 5, range_min=5).window(1, n)
    sizes = []
    monkeypatch.setattr(mining, "TopK", lambda q, k, **kw: sizes.append(k) or TopK(q, k, **kw))
    wide = mining.mine(job.pairs, query_emb, candidate_emb, job.candidates, mining.MineOptions(3, range_max=10**7))
    narrow = mining.mine(job.pairs, query_emb, candidate_emb, job.candidates, mining.MineOptions(3, range_max=n))
    assert sizes == [n, n] and wide.negatives == narrow.negatives


def test_mining_that_finds_nothing_says_so_and_writes_nothing(embedded, tmp_path):
    job, (query_emb, candidate_emb) = embedded
    options = mining.MineOptions(num_negatives=2, max_score=-1.0)  # every candidate scores above it
    result = mining.mine(job.pairs, query_emb, candidate_emb, job.candidates, options)
    assert (result.short, result.none, result.pairs) == (65, 65, 65)
    assert "for 65 of 65 (query, positive) pairs (100.00%; 65 found none at all)" in mining.summary(result, options)
    out = mining.MineJob(job.pairs, tmp_path / "mined.jsonl")
    out.work.mkdir()
    with pytest.raises(ValueError, match=r"no \(query, positive\) pair got enough negatives \(65 of 65 got none\)"):
        out.finish(result)
    assert not out.output.exists() and out.work.is_dir(), "the embeddings stay for a rerun with other limits"


def test_cli_writes_a_training_input_and_resumes_after_a_kill(tiny_dir: Path, tmp_path: Path):
    """SIGKILL once the first candidate shard is on disk; the rerun embeds only the rest and writes the same
    rows as an uninterrupted run."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": p.query, "a": p.positive}) + "\n" for p in _pairs()))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{t} ({i})" for i in range(8) for t in _corpus()) + "\n")  # ~700 texts
    common = ["mine", "-i", pairs, "--corpus", corpus, "--num-negatives", "2", "--shard-size", "32", "--no-progress"]
    whole = run_cli(tiny_dir, *common, "-o", tmp_path / "whole.jsonl")
    assert "Positive" in whole.stdout and "wrote" in whole.stdout

    out = tmp_path / "resumed.jsonl"
    work = tmp_path / "resumed.jsonl.mining" / "candidates.npy.partial"
    cmd = [str(SCRIPT), *map(str, common), "-o", str(out)]
    proc = subprocess.Popen(cmd, env=cli_env(tiny_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while not list(work.glob("shard-*.npy")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    resumed = run_cli(tiny_dir, *common, "-o", out)
    assert "resuming:" in resumed.stderr
    assert out.read_text() == (tmp_path / "whole.jsonl").read_text()
    assert not (tmp_path / "resumed.jsonl.mining").exists()


def test_cli_mistakes_are_one_line_before_the_model_loads(tmp_path: Path, capsys):
    from embeddinggemma import cli

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "q", "positive": "p"}\n')
    assert cli.main(["mine", "-i", str(pairs), "-o", str(tmp_path / "out.jsonl"), "--columns", "{bad"]) == 1
    assert "--columns: invalid JSON (Expecting property name enclosed in double quotes at column 2)" in (
        capsys.readouterr().err
    )
    assert cli.main(["mine", "-i", str(pairs), "-o", str(tmp_path / "out.jsonl"), "--num-negatives", "1000000"]) == 1
    assert_one_line_error(capsys.readouterr().err, "mine", "cannot mine 1,000,000 negatives a row: the corpus has 1 ")
    assert cli.main(["mine", "-i", str(pairs), "-o", str(pairs)]) == 1
    assert "is also an input; writing it would destroy the input" in capsys.readouterr().err
    assert pairs.read_text() == '{"query": "q", "positive": "p"}\n'
