"""Exact search on the device equals numpy's, and `evaluate` gives pytrec_eval's numbers for the same scores
with the prompts and titles the model card prescribes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from embeddinggemma import sharding
from embeddinggemma.encode import vectors
from embeddinggemma.errors import InputError
from embeddinggemma.eval import retrieval
from tests.helpers.cli import run_cli
from tests.helpers.retrieval import facts


@pytest.mark.parametrize("mesh", [None, "data=2,fsdp=4"])
def test_top_k_over_chunks_and_devices_equals_numpy(mesh):
    rng = np.random.default_rng(0)
    q, c = vectors.l2_normalize(rng.normal(size=(37, 16))), vectors.l2_normalize(rng.normal(size=(1000, 16)))
    c[10] = c[500] = q[0]  # query 0's two best, with equal scores: the lower row first
    search = retrieval.TopK(q, 7, mesh=sharding.make_mesh(mesh) if mesh else None, chunk=96, query_block=16)
    search.add(c[:333])
    search.add(c[333:])
    rows, scores = search.result()
    expected_rows, expected_scores = vectors.top_k(q @ c.T, 7)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    assert list(rows[0, :2]) == [10, 500]

    few = retrieval.TopK(q, 7)
    few.add(c[:3])
    rows, scores = few.result()
    assert (rows[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


QUERY, TITLE, NO_TITLE = "task: search result | query: ", "title: {} | text: ", "title: none | text: "


def _write_beir(root: Path) -> dict:
    """Passages (every third untitled), questions, graded qrels; a judged document missing from the corpus."""
    rows = facts()[:40]
    corpus = [{"_id": f"doc{i}", "title": kind if i % 3 else "", "text": p} for i, (kind, _, p) in enumerate(rows)]
    queries = [{"_id": f"q{i}", "text": q} for i, (_, q, _) in enumerate(rows)]
    qrels = {f"q{i}": {f"doc{i}": 2} for i in range(0, 40, 2)}  # odd queries unjudged: not evaluated
    qrels["q2"] |= {"doc3": 1, "doc99": 1}
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, docs in qrels.items() for d, s in docs.items()]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return {"corpus": corpus, "queries": {r["_id"]: r["text"] for r in queries}, "qrels": qrels}


def test_evaluate_equals_pytrec_eval_on_the_same_scores(tiny_dir, tiny_model, tmp_path):
    data = _write_beir(tmp_path / "beir")
    out = run_cli(tiny_dir, "evaluate", "--data", tmp_path / "beir", "--dims", "48,16", "-o", tmp_path / "r.json")
    results = json.loads((tmp_path / "r.json").read_text())
    assert "ndcg@10" in out.stdout.splitlines()[0] and list(results) == ["48", "16"]

    qids = list(data["qrels"])
    q = tiny_model.encode([QUERY + data["queries"][i] for i in qids], prompt="")
    docs = [(TITLE.format(d["title"]) if d["title"] else NO_TITLE) + d["text"] for d in data["corpus"]]
    c = tiny_model.encode(docs, prompt="")
    measures = {"ndcg_cut.10": "ndcg@10", "map_cut.100": "map@100", "recall.1": "recall@1", "recall.10": "recall@10"}
    measures |= {"recall.100": "recall@100", "P.1": "precision@1"}
    for dim in (48, 16):
        scores = vectors.truncate(q, dim) @ vectors.truncate(c, dim).T
        run = {
            qid: {d["_id"]: float(s) for d, s in zip(data["corpus"], row, strict=True)}
            for qid, row in zip(qids, scores, strict=True)
        }
        per_query = pytrec_eval.RelevanceEvaluator(data["qrels"], set(measures)).evaluate(run)
        top10 = {qid: dict(sorted(d.items(), key=lambda x: (x[1], x[0]), reverse=True)[:10]) for qid, d in run.items()}
        rr = pytrec_eval.RelevanceEvaluator(data["qrels"], {"recip_rank"}).evaluate(top10)
        expected = {name: np.mean([v[m.replace(".", "_")] for v in per_query.values()]) for m, name in measures.items()}
        expected["mrr@10"] = np.mean([v["recip_rank"] for v in rr.values()])
        assert len(per_query) == 20
        assert results[str(dim)] == pytest.approx(expected, abs=1e-6)
        assert 0 < expected["ndcg@10"] < 1  # neither trivial nor hopeless


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (
            lambda root: (root / "qrels" / "test.tsv").rename(root / "qrels" / "dev.tsv"),
            "test.tsv: no such file (splits here: dev)",
        ),
        (
            lambda root: (root / "queries.jsonl").write_text('{"_id": "q0", "text": "only one"}\n'),
            "query id 'q2' is not in queries.jsonl",
        ),
        (
            lambda root: (root / "corpus.jsonl").write_text('{"_id": "d", "text": "ok"}\n{"_id": "e"}\n'),
            "corpus.jsonl:2: no string field 'text'",
        ),
        (
            lambda root: (root / "qrels" / "test.tsv").write_text("h\nq0\tdoc0\tx\n"),
            "test.tsv:2: expected query-id, corpus-id, integer score",
        ),
    ],
)
def test_bad_beir_directories_are_named(tmp_path, breakage, message):
    _write_beir(tmp_path)
    breakage(tmp_path)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        retrieval.RetrievalSet.from_beir(tmp_path)


def test_beir_directory_is_recognised_as_an_eval_file(tmp_path):
    _write_beir(tmp_path / "beir")
    assert retrieval.beir_split(str(tmp_path / "beir")) == (tmp_path / "beir", "test")
    assert retrieval.beir_split(f"{tmp_path / 'beir'}:dev") == (tmp_path / "beir", "dev")
    assert retrieval.beir_split(str(tmp_path)) is None
