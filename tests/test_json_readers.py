"""Every JSON reader (corpora, BEIR sets, training rows, configs, checkpoint files, options) turns whatever the
JSON parser raises into one error naming the file and line: bad syntax, bytes that are not UTF-8, and
nesting deeper than the parser can follow (a RecursionError, which is no ValueError)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from embeddinggemma.checkpoint import hf
from embeddinggemma.corpus.readers import read_records
from embeddinggemma.errors import CheckpointError, DataError, InputError, parse_json
from embeddinggemma.eval.retrieval import RetrievalSet
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.train.config import TrainConfig
from embeddinggemma.train.sources import open_rows
from tests.helpers.cli import assert_one_line_error
from tests.helpers.faults import run_main

DEEP = "[" * 100_000  # what the adversarial pass sent: 100,000 nested arrays
DEEP_MESSAGE = "invalid JSON (nested 100,000 levels deep at column 100000; too deep for the parser)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (DEEP, DEEP_MESSAGE),
        ('{"a": ' * 5000, "invalid JSON (nested 5,000 levels deep at column 29995; too deep for the parser)"),
        (
            '{"texts": ["[not a bracket", "]"],\n "x": ' + "[" * 3000 + "\n",
            "invalid JSON (nested 3,001 levels deep at line 2 column 3006; too deep for the parser)",
        ),
        ('{"text": "ok",}', "invalid JSON (Expecting property name enclosed in double quotes at column 15)"),
        ('{\n  "steps": 10\n  "seed": 1\n}', "invalid JSON (Expecting ',' delimiter at line 3 column 3)"),
        (b'{"text": "caf\xe9"}', "not valid UTF-8 (byte 13)"),
    ],
)
def test_parse_json_names_the_place_and_the_cause(data: str | bytes, message: str) -> None:
    with pytest.raises(InputError) as raised:
        parse_json(data, "in.jsonl:7")
    assert str(raised.value) == f"in.jsonl:7: {message}"


def test_parse_json_counts_only_real_nesting() -> None:
    assert parse_json('{"text": "[[[{{"}') == {"text": "[[[{{"}
    nested: list = []
    for _ in range(499):
        nested = [nested]
    assert parse_json("[" * 500 + "]" * 500) == nested, "moderate nesting still parses"
    with pytest.raises(CheckpointError, match=r"^x\.json: invalid JSON \(nested 2,000 levels deep"):
        parse_json('["[[[", ' + "[" * 1999, "x.json", error=CheckpointError)


def _beir(root: Path, corpus: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(corpus)
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


def _checkpoint(tiny_dir: Path, tmp: Path, config: str) -> Path:
    copy = tmp / "ckpt"
    shutil.copytree(tiny_dir, copy, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer*"))
    (copy / "config.json").write_text(config)
    return copy


def _read_sharded(index: Path, tiny_dir: Path) -> object:
    """The tiny checkpoint's tensors, read through a (damaged) shard index beside a copy of them."""
    copy = index.parent / "sharded"
    shutil.copytree(tiny_dir, copy)
    shutil.copy(index, copy / index.name)
    return hf.read_params(copy, ModelConfig.from_checkpoint_dir(copy))


# reader -> (file name, how to read it, the error type)
READERS: dict[str, tuple[str, Callable[[Path, Path], object], type[Exception]]] = {
    "encode / search corpus": ("docs.jsonl", lambda f, _: read_records(f), InputError),
    "evaluate BEIR corpus": (
        "beir/corpus.jsonl",
        lambda f, _: RetrievalSet.from_beir(_beir(f.parent.parent / "b", f.read_text()), "test"),
        InputError,
    ),
    "training rows / mine --input": ("train.jsonl", lambda f, _: open_rows(f), DataError),
    "train --config": ("config.json", lambda f, _: TrainConfig.from_file(f), InputError),
    "checkpoint config.json": (
        "config.json",
        lambda f, tiny: ModelConfig.from_checkpoint_dir(_checkpoint(tiny, f.parent, f.read_text())),
        CheckpointError,
    ),
    "checkpoint model.safetensors.index.json": ("model.safetensors.index.json", _read_sharded, CheckpointError),
}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_names_file_and_line_of_deep_nesting(reader: str, tiny_dir: Path, tmp_path: Path) -> None:
    name, read, error = READERS[reader]
    file = tmp_path / name
    file.parent.mkdir(parents=True, exist_ok=True)
    jsonl = name.endswith(".jsonl")
    good = '{"query": "q", "positive": "p", "text": "t", "_id": "d1"}\n' if jsonl else ""
    file.write_text(good + DEEP + "\n")
    with pytest.raises(error) as raised:
        read(file, tiny_dir)
    where = f"{file.name}:2" if jsonl else f"{file.name}: "
    assert where in str(raised.value) and DEEP_MESSAGE in str(raised.value), str(raised.value)
    assert "\n" not in str(raised.value)


def test_skip_malformed_skips_deep_and_undecodable_rows(tmp_path: Path) -> None:
    rows = tmp_path / "train.jsonl"
    good = b'{"query": "q%d", "positive": "p"}\n'
    rows.write_bytes(good % 0 + DEEP.encode() + b"\n" + good % 1 + b'{"query": "\xff", "positive": "p"}\n' + good % 2)
    with pytest.raises(DataError, match=r"train\.jsonl:2: malformed example: invalid JSON \(nested 100,000 levels"):
        open_rows(rows)
    kept = open_rows(rows, skip_malformed=True)
    assert [kept[i].query for i in range(len(kept))] == ["q0", "q1", "q2"]


@pytest.mark.parametrize(
    ("command", "where"),
    [
        ("encode -i {deep} -o {tmp}/x.npy", "deep.jsonl:2: "),
        ("search -q red --corpus {deep}", "deep.jsonl:2: "),
        ("search -q red --corpus {tmp}/x.npy --texts {deep}", "deep.jsonl:2: "),
        ("mine -i {deep} -o {tmp}/mined.jsonl", "deep.jsonl:2: "),
        ("mine -i {good} --corpus {deep} -o {tmp}/mined.jsonl", "deep.jsonl:2: "),
        ("mine -i {good} --columns {{nested}} -o {tmp}/mined.jsonl", "--columns: "),
        ("train --config {config}", "config.json: "),
    ],
)
def test_commands_report_deep_nesting_in_one_line(
    command: str, where: str, cli_in_process: None, tmp_path: Path, capsys
) -> None:
    """Each command reads its JSON before the model loads: one line naming the file and line, exit 1."""
    deep, good = tmp_path / "deep.jsonl", tmp_path / "good.jsonl"
    deep.write_text('{"text": "a", "query": "q", "positive": "p"}\n' + DEEP + "\n")
    good.write_text('{"query": "q", "positive": "p"}\n')
    (tmp_path / "config.json").write_text('{"steps": 1,\n "seed": ' + DEEP + "\n")
    argv = command.format(deep=deep, good=good, tmp=tmp_path, config=tmp_path / "config.json").split()
    status, _, err = run_main([DEEP if a == "{nested}" else a for a in argv], capsys)
    assert status == 1
    line = assert_one_line_error(err, argv[0], where)
    assert "levels deep at" in line, line
