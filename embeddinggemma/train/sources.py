"""Training and evaluation rows with random access, from JSONL, Parquet, `datasets` directories or the Hub.

`open_rows(spec)` returns a `Rows`: `len(rows)` and `rows[i] -> Example`, which grain's index shuffle and
per-process sharding read directly, so memory does not grow with the dataset:
* a local `.jsonl` file: one validating pass records each valid line's byte offset (8 bytes a row);
  rows are read back by seeking. No dependency beyond the standard library.
* Parquet (a file, a glob, or a directory of shards), a directory written by `Dataset.save_to_disk` /
  `DatasetDict.save_to_disk` (`DIR` or `DIR:split`), a Hub dataset id (`owner/name` or `owner/name:split`),
  and any of these (or JSONL) at an fsspec URL (`gs://...`, `file://...`, `memory://...`): read with
  Hugging Face `datasets` (the `data` extra), which keeps an Arrow copy memory-mapped; validation is
  vectorized over the Arrow columns.

Columns follow sentence-transformers' convention: the first column is the query (anchor), the second the
positive, every further column a hard negative, whatever their names. Files in our own JSONL schema
(`query`, `positive`, optional `negatives` list and `title`) are read by name. `Columns` maps names
explicitly. A malformed row (a missing or non-string query or positive, a bad negative or title, invalid
JSON) is an error naming the file and row, or, with `skip_malformed`, skipped and counted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

OUR_SCHEMA = ("query", "positive", "negatives", "title")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class DataError(ValueError):
    """A training or evaluation input cannot be read; the message names the file and row."""


@dataclasses.dataclass(frozen=True)
class Example:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    title: str | None = None


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which fields of a row hold the query, the positive, the hard negatives and the positive's title.
    A negatives field holds one string or a list of strings."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    title: str | None = None

    @classmethod
    def from_config(cls, mapping: dict[str, Any]) -> Columns:
        """{"query": "question", "positive": "answer", "negatives": ["neg_1", "neg_2"], "title": "title"}."""
        unknown = sorted(set(mapping) - set(OUR_SCHEMA))
        if unknown or not isinstance(mapping.get("query"), str) or not isinstance(mapping.get("positive"), str):
            raise ValueError(
                f"columns must map 'query' and 'positive' (and optionally 'negatives', 'title') to column names; "
                f"got {mapping!r}"
            )
        negatives = mapping.get("negatives", ())
        negatives = (negatives,) if isinstance(negatives, str) else tuple(negatives)
        return cls(mapping["query"], mapping["positive"], negatives, mapping.get("title"))

    @classmethod
    def infer(cls, names: Sequence[str], where: str) -> Columns:
        """Our JSONL schema when the fields are named so; else sentence-transformers' column order."""
        if {"query", "positive"} <= set(names) <= set(OUR_SCHEMA):
            negatives = ("negatives",) if "negatives" in names else ()
            return cls("query", "positive", negatives, "title" if "title" in names else None)
        if len(names) < 2:
            raise DataError(f"{where}: needs at least two columns (query, positive), found {list(names)}")
        return cls(names[0], names[1], tuple(names[2:]))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.query, self.positive, *self.negatives, *((self.title,) if self.title else ()))

    def example(self, row: dict[str, Any]) -> Example:
        """The Example of one row (a dict); ValueError saying what is wrong with it."""
        for key in (self.query, self.positive):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{key!r} must be a string")
        negatives: list[str] = []
        for key in self.negatives:
            value = row.get(key)
            if isinstance(value, str):
                negatives.append(value)
            elif isinstance(value, list) and all(isinstance(n, str) for n in value):
                negatives += value
            elif value is not None:
                raise ValueError(f"{key!r} must be a string or a list of strings")
        title = row.get(self.title) if self.title else None
        if title is not None and not isinstance(title, str):
            raise ValueError(f"{self.title!r} must be a string")
        return Example(row[self.query], row[self.positive], tuple(negatives), title)


class Rows(Protocol):
    """Random access to the rows of an input (grain's RandomAccessDataSource protocol)."""

    name: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


def _malformed(name: str, row: str, error: str, skip: bool) -> None:
    if not skip:
        raise DataError(f"{name}:{row}: malformed example: {error}")


def _report_skipped(name: str, skipped: int) -> None:
    if skipped:
        logger.warning("%s: skipped %d malformed rows (skip_malformed=true)", name, skipped)


class JsonlRows:
    """A local JSONL file, one example a line; blank lines are ignored. Rows are read with `os.pread`
    (positional, so grain's reader threads can share the file)."""

    def __init__(self, path: str | Path, columns: Columns | None = None, *, skip_malformed: bool = False):
        self.name = str(path)
        self.columns = columns
        spans, skipped = [], 0
        with open(path, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, 1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                try:
                    obj = _json_object(raw)
                    if self.columns is None:  # the first valid line's fields name the columns
                        self.columns = Columns.infer(list(obj), f"{self.name}:{lineno}")
                    self._example(obj)
                except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                    _malformed(self.name, str(lineno), str(e), skip_malformed)
                    skipped += 1
                    continue
                spans.append((start, len(raw)))
        _report_skipped(self.name, skipped)
        if not spans:
            raise DataError(f"{self.name}: no examples")
        self.spans = np.asarray(spans, np.int64)  # (offset, length) of each valid line
        self._fd = os.open(path, os.O_RDONLY)  # kept open for random access; closed with the process

    def _example(self, obj: dict[str, Any]) -> Example:
        assert self.columns is not None
        extra = sorted(set(obj) - set(self.columns.names))
        if extra:
            raise ValueError(f"unknown keys {extra}")
        return self.columns.example(obj)

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, index: int) -> Example:
        offset, length = self.spans[index]
        return self._example(_json_object(os.pread(self._fd, int(length), int(offset))))


def _json_object(raw: bytes) -> dict[str, Any]:
    obj = json.loads(raw.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


class ArrowRows:
    """A Hugging Face `datasets.Dataset` (memory-mapped Arrow) as rows, validated column-wise."""

    def __init__(self, dataset: Any, name: str, columns: Columns | None = None, *, skip_malformed: bool = False):
        import pyarrow as pa
        import pyarrow.compute as pc

        self.name = name
        self.columns = columns or Columns.infer(dataset.column_names, name)
        missing = [c for c in self.columns.names if c not in dataset.column_names]
        if missing:
            raise DataError(f"{name}: no column {missing[0]!r}; the columns are {dataset.column_names}")
        table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
        bad = np.zeros(len(dataset), bool)
        reasons: dict[str, np.ndarray] = {}
        for key in self.columns.names:
            column, kind = table.column(key), table.schema.field(key).type
            required = key in (self.columns.query, self.columns.positive)
            is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
            is_list = (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_string(kind.value_type)
            if not (is_text or (is_list and key in self.columns.negatives)):
                raise DataError(f"{name}: column {key!r} has type {kind}; expected strings")
            if required:
                nulls = pc.is_null(column).to_numpy(zero_copy_only=False)
                reasons[f"{key!r} must be a string"] = nulls
                bad |= nulls
        if bad.any():
            first = int(np.argmax(bad))
            reason = next(r for r, rows in reasons.items() if rows[first])
            _malformed(name, f"row {first}", reason, skip_malformed)
            _report_skipped(name, int(bad.sum()))
        self.valid = None if not bad.any() else np.flatnonzero(~bad)
        self.dataset = dataset.select_columns(list(self.columns.names))
        if len(self) == 0:
            raise DataError(f"{name}: no examples")

    def __len__(self) -> int:
        return len(self.dataset) if self.valid is None else len(self.valid)

    def __getitem__(self, index: int) -> Example:
        row = self.dataset[int(index if self.valid is None else self.valid[index])]
        return self.columns.example(row)


def _load_dataset(spec: str) -> tuple[Any, str]:
    """A `datasets.Dataset` for a spec that is not a local JSONL file, and its name for messages."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"reading {spec} needs Hugging Face datasets: pip install 'embeddinggemma-jax[data]'") from e
    path, _, split = spec.rpartition(":") if _split_suffix(spec) else (spec, "", "")
    local = Path(path)
    if _is_saved(path):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if not split:
                raise DataError(f"{path} holds splits {sorted(loaded)}: name one as {path}:SPLIT")
            loaded = loaded[split]
        return loaded, spec
    if local.is_dir():
        files = sorted(str(p) for p in local.glob("*.parquet"))
        if not files:
            raise DataError(f"{path}: a directory with neither .parquet files nor a saved dataset")
        return datasets.load_dataset("parquet", data_files=files, split="train"), spec
    suffix = path.split("?")[0].lower()
    if suffix.endswith(".parquet") or "*" in suffix:
        return datasets.load_dataset("parquet", data_files=path, split="train"), spec
    if suffix.endswith((".jsonl", ".json", ".ndjson")):
        return datasets.load_dataset("json", data_files=path, split="train"), spec
    if HUB_ID.fullmatch(path) and not local.exists():
        return datasets.load_dataset(path, split=split or "train"), spec
    raise DataError(f"{spec}: not a JSONL or Parquet file, a saved dataset, or a Hub dataset id")


def _split_suffix(spec: str) -> bool:
    """Whether the spec ends in ':split' (a name after the last colon, not the '//...' of a URL)."""
    head, sep, tail = spec.rpartition(":")
    return bool(sep and head) and re.fullmatch(r"[\w.-]+", tail) is not None


def _is_saved(path: str) -> bool:
    """A directory written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (local or a URL)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return fs.isfile(f"{root}/state.json") or fs.isfile(f"{root}/dataset_dict.json")


def open_rows(spec: str | Path, columns: Columns | None = None, *, skip_malformed: bool = False) -> Rows:
    """The rows of an input given as a path, glob, URL, `DIR:split` or Hub id (see the module docstring)."""
    spec = str(spec)
    path = Path(spec.removeprefix("file://"))
    if path.suffix.lower() in (".jsonl", ".ndjson") and "://" not in spec.replace("file://", ""):
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return JsonlRows(path, columns, skip_malformed=skip_malformed)
    dataset, name = _load_dataset(spec)
    return ArrowRows(dataset, name, columns, skip_malformed=skip_malformed)


def examples(rows: Rows) -> Iterator[Example]:
    """Every row in order (evaluation sets are read whole)."""
    return (rows[i] for i in range(len(rows)))
