"""embeddinggemma.train.code_search_data: docstring -> code pairs, split by module, no answer leaked."""

from __future__ import annotations

import json
from pathlib import Path

from embeddinggemma.eval import retrieval
from embeddinggemma.train import code_search_data as data

MODULE = '''
def add(a, b):
    """Return the sum of two numbers given as arguments.

    Longer explanation that must not reach the query.
    """
    total = a + b
    return total


class Box:
    @staticmethod
    def open_lid(force):
        """Open the lid of the box with the given force. Then close it."""
        if force > 1:
            raise ValueError(force)
        return True


def short(x):
    """Too short."""
    return x
'''


def _tree(tmp_path: Path, modules: int) -> Path:
    for i in range(modules):
        (tmp_path / f"mod{i}.py").write_text(MODULE.replace("numbers", f"numbers {i}").replace("box", f"box {i}"))
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "skipped.py").write_text(MODULE.replace("numbers", "skipped numbers"))
    (tmp_path / "broken.py").write_text("def f(:\n")
    return tmp_path


def test_pairs_take_the_first_sentence_and_strip_the_docstring(tmp_path):
    found = data.collect(_tree(tmp_path, 1))
    assert list(found) == ["mod0"]  # test/ skipped, a syntax error is not fatal
    by_name = {name: (query, code) for name, query, code in found["mod0"]}
    assert set(by_name) == {"add", "Box.open_lid"}  # "Too short." is not a query
    assert by_name["add"][0] == "Return the sum of two numbers 0 given as arguments."
    assert by_name["Box.open_lid"][0] == "Open the lid of the box 0 with the given force."
    assert by_name["Box.open_lid"][1].splitlines()[0].strip() == "@staticmethod"
    for _, code in by_name.values():
        assert '"""' not in code and "Longer explanation" not in code
    assert "return total" in by_name["add"][1]


def test_split_is_by_module_deterministic_and_deduplicated(tmp_path):
    root = _tree(tmp_path, 40)
    (root / "dup.py").write_text(MODULE.replace("numbers", "numbers 0").replace("box", "box 0"))
    train, evals = data.build(root, eval_fraction=0.3, max_eval=1000)
    assert (train, evals) == data.build(root, eval_fraction=0.3, max_eval=1000)
    queries = [r["query"] for r in train + evals]
    assert len(queries) == len(set(queries)) == 80  # dup.py repeats mod0's queries: dropped
    eval_modules = {q.split()[-4] for q in (r["query"] for r in evals) if "sum" in q}
    train_modules = {q.split()[-4] for q in (r["query"] for r in train) if "sum" in q}
    assert eval_modules and train_modules and not eval_modules & train_modules
    for row in train + evals:
        assert row["negatives"][0] != row["positive"]


def test_write_gives_jsonl_and_a_beir_eval_set(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    n_train, n_eval = data.write(out, _tree(src, 30), eval_fraction=0.3)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == n_train and len((out / "eval.jsonl").read_text().splitlines()) == n_eval
    assert rows and set(rows[0]) == {"query", "positive", "negatives"}
    assert (out / "eval.jsonl").read_text().strip()
    beir = retrieval.RetrievalSet.from_beir(out / "eval-beir")  # the same eval set for `evaluate --data`
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert sorted(beir.queries.values()) == sorted(r["query"] for r in evals)
    for qid, judged in beir.qrels.items():
        (doc,) = judged
        row = next(r for r in evals if r["query"] == beir.queries[qid])
        assert beir.texts[beir.doc_ids.index(doc)] == row["positive"]
    assert set(beir.texts) == {r["positive"] for r in evals} | {r["negatives"][0] for r in evals}
