"""Training inputs: JSONL, Parquet (file, directory of shards), saved datasets and URLs give the same rows,
batches and trained parameters; column conventions; malformed rows; memory that does not grow with the data."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embeddinggemma import TrainConfig, train
from embeddinggemma.encode.prompts import Prompts
from embeddinggemma.errors import DataError
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.train.data import Batches, Collator
from embeddinggemma.train.sources import Columns, Example, open_rows
from tests.helpers import ROOT
from tests.helpers.retrieval import write_split
from tests.helpers.train import final_state, tiny_run_config


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same training rows as JSONL (our schema), Parquet in sentence-transformers' column order (a file,
    and a directory of two shards), a `save_to_disk` directory, and file:// / memory:// URLs."""
    import datasets

    root = tmp_path_factory.mktemp("inputs")
    train_file, eval_file = write_split(root)
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    table = pa.table(
        {
            "anchor": [r["query"] for r in rows],
            "positive": [r["positive"] for r in rows],
            "negative": [r["negatives"][0] for r in rows],
        }
    )
    pq.write_table(table, root / "train.parquet")
    (root / "shards").mkdir()
    half = len(rows) // 2
    pq.write_table(table.slice(0, half), root / "shards" / "part-0.parquet")
    pq.write_table(table.slice(half), root / "shards" / "part-1.parquet")
    datasets.Dataset(table).save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset(table)}).save_to_disk(str(root / "saved_dict"))
    with fsspec.open("memory://inputs/train.parquet", "wb") as f:
        pq.write_table(table, f)
    return {
        "jsonl": str(train_file),
        "parquet": str(root / "train.parquet"),
        "parquet shards": str(root / "shards"),
        "parquet glob": str(root / "shards" / "*.parquet"),
        "save_to_disk": str(root / "saved"),
        "DatasetDict:split": f"{root / 'saved_dict'}:train",
        "file:// jsonl": f"file://{train_file}",
        "file:// parquet": f"file://{root / 'train.parquet'}",
        "memory:// parquet": "memory://inputs/train.parquet",
        "eval": str(eval_file),
    }


FORMATS = [
    "parquet",
    "parquet shards",
    "parquet glob",
    "save_to_disk",
    "DatasetDict:split",
    "file:// jsonl",
    "file:// parquet",
    "memory:// parquet",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_rows_and_batches(fmt: str, inputs: dict[str, str], tiny_dir: Path) -> None:
    reference, rows = open_rows(inputs["jsonl"]), open_rows(inputs[fmt])
    assert len(rows) == len(reference)
    assert [rows[i] for i in range(len(rows))] == [reference[i] for i in range(len(reference))]
    cfg = ModelConfig.from_checkpoint_dir(tiny_dir)
    collate = Collator(
        tiny_dir / "tokenizer.model", cfg, Prompts.for_model(cfg, None, None, "{title}"), num_negatives=1
    )
    ours, theirs = (Batches(r, collate, 16, seed=3) for r in (rows, reference))
    for step in (0, 1, 7, 30):  # 30 is in a later epoch: a new permutation
        a, b = ours[step], theirs[step]
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert ours.local_examples(0) != ours.local_examples(ours.steps_per_epoch)


def test_parquet_and_jsonl_train_to_the_same_parameters(inputs: dict[str, str], tiny_dir: Path, tmp_path: Path) -> None:
    """... and the Parquet run's output_dir is a file:// URL."""
    finals = []
    for fmt in ("jsonl", "parquet"):
        overrides = {"steps": 3, "eval_file": None, "export": False, "save_every": 3, "train_file": inputs[fmt]}
        if fmt == "parquet":
            overrides["output_dir"] = f"file://{tmp_path / fmt}"
        train(
            TrainConfig.from_dict(tiny_run_config(tiny_dir, (inputs[fmt], inputs["eval"]), tmp_path / fmt, **overrides))
        )
        finals.append(final_state(tmp_path / fmt)[1]["params"])
    import jax

    for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _parquet(path: Path, **columns: list) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_columns_by_order_and_by_name(tmp_path: Path) -> None:
    """sentence-transformers' convention: first = query, second = positive, the rest negatives, whatever the
    names; an explicit mapping picks columns by name (a list column of negatives too)."""
    by_order = _parquet(tmp_path / "a.parquet", a=["q"], b=["p"], c=["n1"], d=["n2"])
    assert open_rows(by_order)[0] == Example("q", "p", ("n1", "n2"))
    named = _parquet(
        tmp_path / "b.parquet", doc_title=["T"], answer=["p"], question=["q"], negs=[["n1", "n2"]], other=["x"]
    )
    columns = Columns.from_config(
        {"query": "question", "positive": "answer", "negatives": ["negs"], "title": "doc_title"}
    )
    assert open_rows(named, columns)[0] == Example("q", "p", ("n1", "n2"), "T")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"anchor": "q", "pos": "p", "neg": "n"}) + "\n")
    assert open_rows(jsonl)[0] == Example("q", "p", ("n",))
    with pytest.raises(DataError, match=r"no column 'question'; the columns are \['a', 'b', 'c', 'd'\]"):
        open_rows(by_order, columns)
    with pytest.raises(ValueError, match="columns must map 'query' and 'positive'"):
        Columns.from_config({"query": "question", "anchor": "x"})


def test_malformed_rows_are_named_or_skipped(tmp_path: Path) -> None:
    nulls = _parquet(tmp_path / "nulls.parquet", query=["q0", "q1", "q2", None], positive=["p0", None, "p2", "p3"])
    with pytest.raises(DataError, match=r"nulls\.parquet:row 1: malformed example: 'positive' must be a string"):
        open_rows(nulls)
    rows = open_rows(nulls, skip_malformed=True)
    assert [rows[i].query for i in range(len(rows))] == ["q0", "q2"]
    numbers = _parquet(tmp_path / "numbers.parquet", query=["q"], positive=[3])
    with pytest.raises(DataError, match="column 'positive' has type int64; expected strings"):
        open_rows(numbers)
    with pytest.raises(DataError, match="no such file"):
        open_rows(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text("a note")
    with pytest.raises(DataError, match="not a JSONL or Parquet file, a saved dataset, or a Hub dataset id"):
        open_rows(tmp_path / "notes.txt")


def _not_utf8(*values: bytes) -> pa.Array:
    """A string column holding these bytes unchecked, as a Parquet writer of another tool may store them."""
    return pa.array(values, pa.binary()).view(pa.string())


BAD_PARQUET_ROWS = {  # columns -> the message naming row 1 (0-based) and the column
    "null inside the negatives list": (
        {"query": ["q0", "q1", "q2"], "positive": ["p0", "p1", "p2"], "negatives": [["n"], ["n", None], ["n"]]},
        "row 1: malformed example: 'negatives'[1] must be a string, got null",
    ),
    "bytes that are not UTF-8": (
        {"query": ["q0", "q1", "q2"], "positive": _not_utf8(b"p0", b"caf\xe9", b"p2")},
        "row 1: malformed example: 'positive' is not valid UTF-8 (byte 3 of its text)",
    ),
    "not UTF-8 inside a negatives list": (
        {
            "anchor": ["q0", "q1", "q2"],
            "positive": ["p0", "p1", "p2"],
            "negative": pa.ListArray.from_arrays([0, 1, 2, 3], _not_utf8(b"n", b"\xff", b"n")),
        },
        "row 1: malformed example: 'negative' is not valid UTF-8 (byte 0 of its text)",
    ),
    "null query": (
        {"query": ["q0", None, "q2"], "positive": ["p0", "p1", "p2"]},
        "row 1: malformed example: 'query' must be a string, got null",
    ),
}


@pytest.mark.parametrize("case", BAD_PARQUET_ROWS)
def test_parquet_rows_are_all_checked_up_front(case: str, tmp_path: Path) -> None:
    """Every row is checked when the input opens, as JSONL lines are: the error names the file, row and column
    (a row of the second shard is named in that shard), or skip_malformed skips and counts it."""
    columns, message = BAD_PARQUET_ROWS[case]
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table(columns).slice(0, 1), shards / "part-0.parquet")  # a good row, the same schema
    bad = _parquet(shards / "part-1.parquet", **columns)
    for spec, where in ((bad, bad), (str(shards), bad), (f"{shards}/*.parquet", bad)):
        with pytest.raises(DataError) as raised:
            open_rows(spec)
        assert str(raised.value) == f"{where}:{message}"
    rows = open_rows(bad, skip_malformed=True)
    assert [rows[i].query for i in range(len(rows))] == ["q0", "q2"]


def test_saved_datasets_rows_are_checked_up_front(tmp_path: Path) -> None:
    import datasets

    table = pa.table({"query": ["q0", "q1"], "positive": ["p0", "p1"], "negatives": [["n"], [None]]})
    datasets.Dataset(table).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"saved:row 1: malformed example: 'negatives'\[0\] must be a string, got null"):
        open_rows(tmp_path / "saved")


def test_bad_training_data_is_refused_before_the_model_loads_or_anything_is_written(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows are read first: a bad row fails before the weights load and writes nothing."""
    from embeddinggemma.train import loop

    monkeypatch.setattr(loop.checkpoint, "load", lambda *a, **k: pytest.fail("the weights loaded first"))
    bad = _parquet(tmp_path / "train.parquet", query=["q0", "q1"], positive=["p0", "p1"], negatives=[["n"], [None]])
    cfg = TrainConfig(model=str(tiny_dir), train_file=bad, output_dir=str(tmp_path / "run"))
    with pytest.raises(DataError, match=r"train\.parquet:row 1: malformed example: 'negatives'\[0\]"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_num_negatives_is_fitted_to_the_data_and_the_machine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """num_negatives=100000000 once grew to 19 GB: more than any row has is clamped with a warning (the slots
    beyond hold only masked copies of the positive); what the data holds but memory cannot is refused."""
    from embeddinggemma.train.loop import fit_negatives

    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"query": "q", "positive": "p", "negatives": ["a", "b"]}\n{"query": "r", "positive": "p"}\n')
    parquet = _parquet(tmp_path / "train.parquet", query=["q", "r"], positive=["p", "p"], negatives=[["a"], None])
    rows = {"jsonl": open_rows(jsonl), "parquet": open_rows(parquet)}
    assert {kind: r.max_negatives for kind, r in rows.items()} == {"jsonl": 2, "parquet": 1}
    cfg = TrainConfig(model="m", train_file=str(jsonl), output_dir="o", num_negatives=100_000_000)
    with caplog.at_level("WARNING", logger="embeddinggemma"):
        fitted = fit_negatives(cfg, rows["jsonl"], 2048)
    assert fitted.num_negatives == 2 and fitted.global_batch_size == cfg.global_batch_size
    assert f"num_negatives 100000000: no row of {jsonl} has more than 2 hard negatives" in caplog.text
    within = TrainConfig(model="m", train_file=str(jsonl), output_dir="o", num_negatives=1)
    assert fit_negatives(within, rows["jsonl"], 2048) is within

    class Wide:  # rows that do hold a million negatives each
        name, max_negatives = "wide.parquet", 1_000_000

    huge = TrainConfig(model="m", train_file="wide.parquet", output_dir="o", num_negatives=1_000_000)
    with pytest.raises(ValueError, match=r"num_negatives 1000000: 6 batches of 64,000,064 documents of up to 2048 "):
        fit_negatives(huge, Wide(), 2048)


PEAK_ANON = textwrap.dedent(
    """
    import sys, threading, time
    peak = 0
    def sample():  # anonymous memory: a memory-mapped Arrow file's pages are page cache, not allocations
        global peak
        while True:
            with open("/proc/self/status") as f:
                peak = max(peak, next(int(line.split()[1]) for line in f if line.startswith("RssAnon")))
            time.sleep(0.002)
    threading.Thread(target=sample, daemon=True).start()
    from embeddinggemma.model.config import ModelConfig
    from embeddinggemma.train.data import Batches, Collator
    from embeddinggemma.encode.prompts import Prompts
    from embeddinggemma.train.sources import open_rows
    tiny, data = sys.argv[1], sys.argv[2]
    cfg = ModelConfig.from_checkpoint_dir(tiny)
    collate = Collator(f"{tiny}/tokenizer.model", cfg, Prompts.for_model(cfg, None, None, "{title}"), num_negatives=1)
    rows = open_rows(data)
    for batch in Batches(rows, collate, 64, seed=0).iterate(0, 20, prefetch=4, threads=2, then=lambda b: b):
        pass
    time.sleep(0.05)
    print(len(rows), peak // 1024)
    """
)


def _peak_anon_mib(tiny_dir: Path, data: Path, tmp_path: Path) -> tuple[int, int]:
    env = {"EMBEDDINGGEMMA_DATA_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_ANON, str(tiny_dir), str(data)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows, mib = map(int, out.stdout.split())
    return rows, mib


def test_peak_memory_does_not_grow_with_the_dataset(tiny_dir: Path, tmp_path: Path) -> None:
    """Peak anonymous memory (a memory-mapped file's pages are page cache the kernel can drop) of converting a
    Parquet file to Arrow, shuffling it and reading batches does not grow with its rows."""

    def write(n: int) -> Path:
        i = np.arange(n).astype(str)
        table = pa.table(
            {
                "query": np.char.add("question number ", i),
                "positive": np.char.add(np.char.add("the answer to question ", i), " is written here"),
                "negative": np.char.add("an unrelated passage ", i[::-1]),
            }
        )
        path = tmp_path / f"rows{n}.parquet"
        pq.write_table(table, path, row_group_size=100_000)
        return path

    peaks = dict(_peak_anon_mib(tiny_dir, write(n), tmp_path) for n in (300, 1_500_000, 3_000_000))
    print(f"peak anonymous memory (MiB) by rows: {peaks}")
    # Converting holds about one 100,000-row group; the same file's peak varies by ~25 MiB between runs (CI
    # 2026-11-30: 144 / 242 MiB for 300 / 3M rows; alone: 144 / 248 / 226 for 300 / 1.5M / 3M). Holding the
    # rows would cost their ~280 MiB of text on top.
    assert peaks[3_000_000] <= peaks[300] + 128
    assert peaks[3_000_000] <= peaks[1_500_000] + 32  # and twice the rows cost nothing more
