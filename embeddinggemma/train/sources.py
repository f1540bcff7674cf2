"""Training and evaluation rows with random access, from JSONL, Parquet, saved `datasets` or the Hub.

`open_rows(spec)` returns a `Rows`: `len(rows)` and `rows[i] -> Example`, which grain's index shuffle and
per-process sharding read directly, so memory does not grow with the dataset:
* JSONL: one validating pass records each valid line's byte offset and length (16 bytes a row); rows are
  read back with `os.pread`. Needs nothing beyond the standard library.
* Parquet (a file, a glob, or a directory of shards): converted once, streaming, to an uncompressed Arrow
  file in the data cache (`cache_dir()`), which is memory-mapped: converting holds about one row group,
  reading a row touches only its pages. Needs pyarrow (the `data` extra).
* A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (`DIR` or `DIR:split`) and a Hub
  dataset id (`owner/name` or `owner/name:split`): Hugging Face `datasets` (the `data` extra), memory-mapped.
Any of these may be an fsspec URL (`gs://...` with gcsfs, `file://...`, `memory://...`); a remote JSONL file
is copied to the data cache first.

Columns follow sentence-transformers' convention: the first column is the query (anchor), the second the
positive, every further column a hard negative, whatever their names. Files in our own JSONL schema
(`query`, `positive`, optional `negatives` list and `title`) are read by name. `Columns` maps names
explicitly. A malformed row (a missing or non-string query or positive, a bad negative or title, invalid
JSON) is an error naming the file and row, or, with `skip_malformed`, skipped and counted.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embeddinggemma import files
from embeddinggemma.errors import DataError, parse_json
from embeddinggemma.model.tokenizer import text_error

logger = logging.getLogger(__name__)

OUR_SCHEMA = ("query", "positive", "negatives", "title")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


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
        """The Example of one row (a dict); ValueError naming the column (and list item) that is wrong."""
        query = _text(row.get(self.query), repr(self.query))
        positive = _text(row.get(self.positive), repr(self.positive))
        negatives: list[str] = []
        for key in self.negatives:
            value = row.get(key)
            if isinstance(value, list):
                negatives += [_text(n, f"{key!r}[{j}]") for j, n in enumerate(value)]
            elif value is not None:
                if not isinstance(value, str):
                    raise ValueError(f"{key!r} must be a string or a list of strings, got {_kind(value)}")
                negatives.append(_text(value, repr(key)))
        title = row.get(self.title) if self.title else None
        return Example(query, positive, tuple(negatives), None if title is None else _text(title, repr(self.title)))


def _kind(value: object) -> str:
    """A value's type as the data calls it: null, not NoneType."""
    return "null" if value is None else type(value).__name__


def _text(value: object, label: str) -> str:
    """`value` if it is a string that can be tokenized, else a ValueError naming `label` and what it holds."""
    if not isinstance(value, str):
        raise ValueError(f"{label} must be a string, got {_kind(value)}")
    if problem := text_error(value):
        raise ValueError(f"{label} is {problem}")
    return value


class Rows(Protocol):
    """Random access to the rows of an input (grain's RandomAccessDataSource protocol)."""

    name: str
    max_negatives: int  # the most hard negatives any row has (from the validating pass)

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
        starts, lengths, skipped = array.array("q"), array.array("q"), 0  # 16 bytes a row, nothing more
        self.max_negatives = 0
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
                    self.max_negatives = max(self.max_negatives, len(self._example(obj).negatives))
                except ValueError as e:  # parse_json's InputError too: bad JSON, UTF-8 or nesting
                    _malformed(self.name, str(lineno), str(e), skip_malformed)
                    skipped += 1
                    continue
                starts.append(start)
                lengths.append(len(raw))
        _report_skipped(self.name, skipped)
        if not starts:
            raise DataError(f"{self.name}: no examples")
        self.starts, self.lengths = np.frombuffer(starts, np.int64), np.frombuffer(lengths, np.int64)
        self._fd = os.open(path, os.O_RDONLY)  # kept open for random access; closed with the process

    def _example(self, obj: dict[str, Any]) -> Example:
        assert self.columns is not None
        extra = sorted(set(obj) - set(self.columns.names))
        if extra:
            raise ValueError(f"unknown keys {extra}")
        return self.columns.example(obj)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> Example:
        raw = os.pread(self._fd, int(self.lengths[index]), int(self.starts[index]))
        return self._example(_json_object(raw))


def _json_object(raw: bytes) -> dict[str, Any]:
    obj = parse_json(raw)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


class ArrowRows:
    """An Arrow table (memory-mapped) as rows. Every row is checked up front, column by column in Arrow's
    kernels (`_malformed_rows`), so a bad row fails before training writes anything; the first is described
    by `Columns.example`, the check a row of every format passes.

    `locate(row)`: the file and row within it of a table row, for messages (Parquet shards read as one table)."""

    def __init__(
        self,
        table: Any,
        name: str,
        columns: Columns | None = None,
        *,
        skip_malformed: bool = False,
        locate: Callable[[int], tuple[str, int]] | None = None,
    ):
        import pyarrow as pa

        self.name = name
        self.columns = columns or Columns.infer(table.column_names, name)
        missing = [c for c in self.columns.names if c not in table.column_names]
        if missing:
            raise DataError(f"{name}: no column {missing[0]!r}; the columns are {table.column_names}")
        for key in self.columns.names:
            kind = table.schema.field(key).type
            is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
            is_list = (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_string(kind.value_type)
            if not (is_text or (is_list and key in self.columns.negatives)):
                raise DataError(f"{name}: column {key!r} has type {kind}; expected strings")
        self.table = table.select(list(self.columns.names))
        bad = _malformed_rows(self.table, self.columns)
        if bad.any() and not skip_malformed:
            row = int(np.argmax(bad))
            file, local = locate(row) if locate else (name, row)
            _malformed(file, f"row {local}", self._problem(row), skip=False)
        _report_skipped(name, int(bad.sum()))
        self.valid = np.flatnonzero(~bad) if bad.any() else None
        if len(self) == 0:
            raise DataError(f"{name}: no examples")
        self.max_negatives = _most_negatives(self.table, self.columns, ~bad)

    def _problem(self, row: int) -> str:
        """What `Columns.example` says of a row the column checks refused."""
        value = _decoded(self.table.slice(row, 1))
        try:
            if isinstance(value, str):
                return value
            self.columns.example(value)
        except ValueError as e:
            return str(e)
        raise RuntimeError(f"{self.name}: row {row} failed the column checks, yet Columns.example accepts it")

    def __len__(self) -> int:
        return self.table.num_rows if self.valid is None else len(self.valid)

    def __getitem__(self, index: int) -> Example:
        row = int(index if self.valid is None else self.valid[index])
        return self.columns.example(self.table.slice(row, 1).to_pylist()[0])


def _malformed_rows(table: Any, columns: Columns) -> np.ndarray:
    """Which rows `Columns.example` refuses, found with Arrow's kernels at memory-mapped speed: a null query
    or positive, a null inside a negatives list, and bytes that are not UTF-8 in any string (Parquet writers
    need not check; lone surrogates, which UTF-8 cannot hold, are among them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bad = np.zeros(table.num_rows, bool)
    for key in (columns.query, columns.positive):
        bad |= pc.is_null(table.column(key)).to_numpy()
    for key in columns.names:
        column = table.column(key)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            nulls = pc.is_null(pc.list_flatten(column)).to_numpy()
            bad[pc.list_parent_indices(column).to_numpy()[nulls]] = True
        start = 0
        for chunk in column.chunks:
            try:
                chunk.validate(full=True)
            except pa.ArrowInvalid:  # not UTF-8 somewhere in this chunk: find the rows, in Python
                bad[start : start + len(chunk)] |= [_undecodable(value) for value in chunk]
            start += len(chunk)
    return bad


def _most_negatives(table: Any, columns: Columns, rows: np.ndarray) -> int:
    """The most hard negatives any of `rows` (a mask) has: a list's length, or 1 for a non-null string."""
    import pyarrow as pa
    import pyarrow.compute as pc

    count = np.zeros(table.num_rows, np.int32)  # 4 bytes a row, as the JSONL index's 16
    for key in columns.negatives:
        column = table.column(key)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            count += pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int32, copy=False)
        else:
            count += pc.is_valid(column).to_numpy()
    return int(np.max(count, where=rows, initial=0))


def _undecodable(value: Any) -> bool:
    try:
        value.as_py()
    except UnicodeDecodeError:
        return True
    return False


def _decoded(row: Any) -> dict[str, Any] | str:
    """A one-row table as a dict, or which column holds bytes that are not UTF-8."""
    values = {}
    for key in row.column_names:
        try:
            values[key] = row.column(key)[0].as_py()
        except UnicodeDecodeError as e:
            return f"{key!r} is not valid UTF-8 (byte {e.start} of its text)"
    return values


def cache_dir() -> Path:
    """Where converted inputs are kept: $EMBEDDINGGEMMA_DATA_CACHE, else ~/.cache/embeddinggemma/data."""
    return files.cache_dir("data", "EMBEDDINGGEMMA_DATA_CACHE")


def _cached(fs: Any, paths: list[str], suffix: str, convert: Callable[[Path], None]) -> Path:
    """The cache file made by `convert(tmp)` for these inputs, made once: keyed by each input's name, size
    and modification time (fsspec's ukey), written under a temporary name and renamed when complete."""
    key = hashlib.sha256(json.dumps([[p, fs.ukey(p)] for p in paths]).encode()).hexdigest()[:32]
    dest = cache_dir() / f"{key}{suffix}"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        try:
            convert(tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def _parquet_table(fs: Any, paths: list[str], name: str) -> Any:
    """Parquet files as one memory-mapped Arrow table. Converted once, streaming (memory is about one row
    group, whatever the dataset's size), to an uncompressed Arrow file that random access can read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def convert(tmp: Path) -> None:
        schema = None
        with pa.OSFile(str(tmp), "wb") as sink:
            writer = None
            for path in paths:
                with fs.open(path, "rb") as f:
                    source = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
                    if schema is None:
                        schema = source.schema_arrow
                        writer = pa.ipc.new_file(sink, schema)
                    elif not source.schema_arrow.equals(schema):
                        raise DataError(f"{path}: columns {source.schema_arrow.names} differ from {paths[0]}'s")
                    for batch in source.iter_batches(batch_size=8192):
                        writer.write_batch(batch)
            writer.close()

    try:
        arrow = _cached(fs, paths, ".arrow", convert)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{name}: cannot read Parquet ({e})") from e
    return pa.ipc.open_file(pa.memory_map(str(arrow))).read_all()


def _parquet_row(fs: Any, paths: list[str], row: int) -> tuple[str, int]:
    """The file, and row within it, of a row of Parquet files read as one table (from their footers)."""
    import pyarrow.parquet as pq

    for path in paths:
        with fs.open(path, "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        if row < rows:
            return path, row
        row -= rows
    raise IndexError(f"row {row} is past the end of {paths}")


def _dataset_table(spec: str) -> tuple[Any, str]:
    """A saved `datasets` directory (`DIR`, `DIR:split`) or a Hub dataset id, as an Arrow table."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"reading {spec} needs Hugging Face datasets: pip install 'embeddinggemma-jax[data]'") from e
    path, _, split = spec.rpartition(":") if _split_suffix(spec) else (spec, "", "")
    if _is_saved(path):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if not split:
                raise DataError(f"{path} holds splits {sorted(loaded)}: name one as {path}:SPLIT")
            loaded = loaded[split]
    else:
        loaded = datasets.load_dataset(path, split=split or "train")
    if loaded._indices is not None:  # saved after select/shuffle: write the rows in order once
        loaded = loaded.flatten_indices()
    return loaded.data.table


def _split_suffix(spec: str) -> bool:
    """Whether the spec ends in ':split' (a name after the last colon, not the '//...' of a URL)."""
    head, sep, tail = spec.rpartition(":")
    return bool(sep and head) and re.fullmatch(r"[\w.-]+", tail) is not None


def _is_saved(path: str) -> bool:
    """A directory written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (local or a URL)."""
    fs, root = _filesystem(path)
    return fs.isfile(f"{root}/state.json") or fs.isfile(f"{root}/dataset_dict.json")


def _filesystem(spec: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as e:
        raise ImportError(f"reading {spec} needs fsspec: pip install 'embeddinggemma-jax[data]'") from e
    return fsspec.core.url_to_fs(spec)


def open_rows(spec: str | Path, columns: Columns | None = None, *, skip_malformed: bool = False) -> Rows:
    """The rows of an input given as a path, glob, URL, `DIR:split` or Hub id (see the module docstring)."""
    spec = str(spec)
    path = Path(spec.removeprefix("file://"))
    if path.suffix.lower() in JSONL_SUFFIXES and "://" not in spec.removeprefix("file://"):
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return JsonlRows(path, columns, skip_malformed=skip_malformed)
    local_spec = spec.split(":")[0] if _split_suffix(spec) else spec
    if HUB_ID.fullmatch(local_spec) and not Path(local_spec).exists():
        return ArrowRows(_dataset_table(spec), spec, columns, skip_malformed=skip_malformed)
    fs, root = _filesystem(spec if not _split_suffix(spec) else local_spec)
    if _is_saved(local_spec):
        return ArrowRows(_dataset_table(spec), spec, columns, skip_malformed=skip_malformed)
    if root.lower().endswith(JSONL_SUFFIXES):  # a JSONL file at a URL: a local copy, then as above
        if not fs.isfile(root):
            raise DataError(f"{spec}: no such file")
        local = _cached(fs, [root], Path(root).suffix, lambda tmp: fs.get_file(root, str(tmp)))
        return JsonlRows(local, columns, skip_malformed=skip_malformed)
    if any(c in root for c in "*?["):
        files = sorted(fs.glob(root))
    elif fs.isdir(root):
        files = sorted(fs.glob(f"{root.rstrip('/')}/*.parquet"))
    else:
        files = [root] if fs.isfile(root) else []
    if not files:
        raise DataError(f"{spec}: no such file, or not JSONL, Parquet, a saved dataset or a Hub dataset id")
    if not all(f.lower().endswith(".parquet") for f in files):
        raise DataError(f"{spec}: not a JSONL or Parquet file, a saved dataset, or a Hub dataset id")
    locate = functools.partial(_parquet_row, fs, files)
    return ArrowRows(_parquet_table(fs, files, spec), spec, columns, skip_malformed=skip_malformed, locate=locate)


def examples(rows: Rows) -> Iterator[Example]:
    """Every row in order (evaluation sets are read whole)."""
    return (rows[i] for i in range(len(rows)))
