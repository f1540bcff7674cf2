"""embeddinggemma.eval.mteb against mteb's own google/embeddinggemma-300m entry (sentence-transformers, PyTorch), both
loaded from the tiny checkpoint: the same prompt per task and side, and the same scores on a retrieval task that
is built here from local data (no download)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mteb
import numpy as np
import pytest
from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.types import PromptType
from torch.utils.data import DataLoader

from embeddinggemma import EmbeddingGemma
from embeddinggemma.cli import main
from embeddinggemma.eval.mteb import OFFICIAL_ENTRY, MtebEncoder

QUERIES = {
    "q1": "which planet is known as red",
    "q2": "how do machine learning models turn text into vectors",
    "q3": "grüße aus münchen",
    "q4": "search results should be ranked by relevance",
}
CORPUS = {  # id: (title, text); mteb joins a title and its text, and the document prompt goes before both
    "d1": ("Mars", "Mars is known as the red planet because of its reddish color"),
    "d2": ("", "machine learning models turn text into dense vectors for retrieval"),
    "d3": ("München", "grüße aus münchen die straße ist sehr schön"),
    "d4": ("", "she sells sea shells by the sea shore"),
    "d5": ("Search", "the search results should be ranked by their relevance to the query"),
    "d6": ("", "the quick brown fox jumps over the lazy dog"),
}
RELEVANT = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d5": 1, "d2": 0}}


class TinyRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(
        name="TinyRetrieval",
        type="Retrieval",
        description="A few queries and documents in the tiny checkpoint's vocabulary, built in memory.",
        reference="https://github.com/embeddings-benchmark/mteb",
        dataset={"path": "local/tiny-retrieval", "revision": "1"},
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=("2025-01-01", "2025-01-01"),
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        dialect=[],
        sample_creation="found",
        bibtex_citation="",
    )

    def load_data(self, num_proc: int | None = None, **kwargs: object) -> None:
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": i, "text": t} for i, t in QUERIES.items()]),
            corpus=Dataset.from_list([{"id": i, "title": ti, "text": t} for i, (ti, t) in CORPUS.items()]),
            relevant_docs=RELEVANT,
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


@pytest.fixture(scope="module")
def official(tiny_dir: Path):
    """mteb's google/embeddinggemma-300m entry, loaded by its own ModelMeta, from the tiny checkpoint."""
    meta = mteb.get_model_meta(OFFICIAL_ENTRY)
    return meta.model_copy(update={"name": str(tiny_dir), "revision": None}).load_model(device="cpu")


@pytest.fixture(scope="module")
def ours(tiny_model: EmbeddingGemma) -> MtebEncoder:
    return MtebEncoder(tiny_model)


PROMPT_CASES = [  # (task, side, the prompt the official entry applies)
    ("SciFact", PromptType.query, "task: search result | query: "),
    ("SciFact", PromptType.document, "title: none | text: "),
    ("STSBenchmark", PromptType.query, "task: sentence similarity | query: "),
    ("Banking77Classification", None, "task: classification | query: "),
    ("SprintDuplicateQuestions", PromptType.query, "task: sentence similarity | query: "),
    ("AskUbuntuDupQuestions", PromptType.document, "task: search result | query: "),
]


@pytest.mark.parametrize(("task", "side", "expected"), PROMPT_CASES)
def test_prompt_per_task_and_side_is_the_official_entrys(task, side, expected, ours, official) -> None:
    from mteb.models.abs_encoder import get_prompt

    metadata = mteb.get_task(task).metadata
    assert ours.prompt(metadata, side) == get_prompt(official.model_prompts, metadata, side) == expected


@pytest.mark.parametrize(("task", "side"), [(task, side) for task, side, _ in PROMPT_CASES[:4]])
def test_embeddings_per_task_and_side_are_the_official_entrys(task, side, ours, official) -> None:
    """The whole encode path, prompt included: a wrong prompt moves every embedding of the tiny model."""
    texts = Dataset.from_dict({"text": ["which planet is known as red", "she sells sea shells"]})
    kwargs = {"task_metadata": mteb.get_task(task).metadata, "hf_split": "test", "hf_subset": "default"}
    got = ours.encode(DataLoader(texts, batch_size=2), prompt_type=side, **kwargs)
    want = official.encode(DataLoader(texts, batch_size=2), prompt_type=side, **kwargs)
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)


def _run(model, tmp_path: Path, name: str) -> tuple[dict, dict]:
    """(scores of the test split, per-query document scores) of one model on TinyRetrieval."""
    result = mteb.evaluate(model, TinyRetrieval(), cache=None, prediction_folder=tmp_path / name)
    (predictions,) = (tmp_path / name).glob("*.json")
    return result.task_results[0].scores["test"][0], json.loads(predictions.read_text())


def test_retrieval_scores_equal_the_official_entrys(ours, official, tmp_path: Path) -> None:
    assert isinstance(ours, mteb.EncoderProtocol)
    scores, predictions = _run(ours, tmp_path, "ours")
    want_scores, want_predictions = _run(official, tmp_path, "official")
    numbers = {k: v for k, v in want_scores.items() if isinstance(v, float)}
    assert len(numbers) > 20 and 0 < scores["main_score"] < 1
    assert {k: scores[k] for k in numbers} == pytest.approx(numbers, abs=1e-4, nan_ok=True)
    # the similarity of every query and document, which any prompt difference would move
    got, want = predictions["default"]["test"], want_predictions["default"]["test"]
    assert got.keys() == want.keys() == QUERIES.keys()
    for query in want:
        assert got[query] == pytest.approx(want[query], abs=1e-4), query


def test_cli_writes_mteb_results(tiny_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("embeddinggemma.cli.mteb.get_tasks", lambda names, languages: [TinyRetrieval()])
    args = ["mteb", "--model", str(tiny_dir), "--tasks", "TinyRetrieval", "--output", str(tmp_path)]
    assert main([*args, "--batch-size", "4", "--no-compilation-cache"]) == 0
    path = tmp_path / "results/embeddinggemma-jax__tiny-embeddinggemma/no_revision_available/experiments/dtype_float32"
    path /= "TinyRetrieval.json"
    score = json.loads(path.read_text())["scores"]["test"][0]["main_score"]
    assert capsys.readouterr().out.split()[:2] == ["TinyRetrieval", f"{score:.5f}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "SciFac"], "MTEB task 'SciFac' not found. Did you mean: 'SciFact'?"),
        (["--tasks", "SciFact", "--languages", "deu"], "no subset of SciFact is in the languages deu"),
    ],
)
def test_cli_task_mistakes_are_one_line(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    assert main(["mteb", *args, "--output", str(tmp_path), "--no-compilation-cache"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"embeddinggemma mteb: error: {message}"


def test_cli_without_mteb_says_how_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "mteb", None)  # as if not installed
    assert main(["mteb", "--tasks", "SciFact", "--output", str(tmp_path), "--no-compilation-cache"]) == 1
    assert "pip install 'embeddinggemma-jax[mteb]'" in capsys.readouterr().err
