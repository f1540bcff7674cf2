"""Reading corpora: text files (one text a line), JSONL (a text field, an optional id), and the .npy
embeddings `encode` writes. Every row is checked as it is read (UTF-8, JSON objects, string fields that can
be tokenized), and a bad one is an InputError naming file and line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from embeddinggemma.encode.precision import Precision, output_dtype
from embeddinggemma.errors import InputError, parse_json
from embeddinggemma.model.tokenizer import text_error

JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Record:
    id: str | int
    text: str


@dataclass(frozen=True)
class InputSummary:
    """What one validating pass over an input file learned: the row count and a content digest."""

    count: int
    sha256: str


def bundled_corpus() -> Path:
    """The small demo corpus shipped in the package (what `embeddinggemma search` uses without --corpus)."""
    return Path(str(resources.files("embeddinggemma").joinpath("data/corpus.jsonl")))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of a file, streamed; a missing or unreadable file is an InputError."""
    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    with open(path, "rb") as f:
        yield from enumerate(f, start=1)


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; a line that is not UTF-8 is named."""
    for number, raw in _lines(path):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}:{number}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8") from e
        if line.strip():
            yield number, line


def iter_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSONL file; bad JSON or a non-object is named."""
    path = Path(path)
    for number, line in _text_lines(path):
        obj = parse_json(line, f"{path}:{number}")
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        yield number, obj


def string_field(path: str | Path, number: int, obj: dict[str, Any], key: str) -> str:
    """`obj[key]`, which must be a string that can be tokenized (a JSON \\ud800 escape is a lone surrogate)."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise InputError(f"{path}:{number}: no string field {key!r}")
    if problem := text_error(value):
        raise InputError(f"{path}:{number}: field {key!r} is {problem}")
    return value


def iter_records(path: str | Path, *, text_field: str = "text") -> Iterator[Record]:
    """The rows of a text or JSONL file, in order, each checked (UTF-8, JSON, a string text field)."""
    path = Path(path)
    if path.suffix.lower() in JSONL_SUFFIXES:
        for number, obj in iter_objects(path):
            yield Record(obj.get("id", number), string_field(path, number, obj, text_field))
    else:
        for number, line in _text_lines(path):
            yield Record(number, line.rstrip("\r\n"))


def scan(path: str | Path, *, text_field: str = "text") -> InputSummary:
    """Validate every row and digest the file, without holding it in memory."""
    path = Path(path)
    count = sum(1 for _ in iter_records(path, text_field=text_field))
    if count == 0:
        raise InputError(f"{path}: no texts in the file (it is empty or has only blank lines)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return InputSummary(count, digest.hexdigest())


def read_records(path: str | Path, *, text_field: str = "text") -> list[Record]:
    """All rows of a (small) file; an empty file is an InputError."""
    records = list(iter_records(path, text_field=text_field))
    if not records:
        raise InputError(f"{path}: no texts in the file (it is empty or has only blank lines)")
    return records


def _why_not_npy(path: Path, error: Exception) -> str:
    """numpy takes any file without the .npy magic string for a pickle: say what the file is instead."""
    magic = np.lib.format.MAGIC_PREFIX
    with open(path, "rb") as f:
        head = f.read(len(magic))
    if head == magic:
        return str(error)  # a .npy whose header or data is bad (e.g. truncated: the mmap is longer than the file)
    return "the file is empty" if not head else "it does not start with the .npy magic string"


def load_embeddings(path: str | Path, *, rows: int | None = None, precision: Precision = "float32") -> np.ndarray:
    """A 2-D .npy written by `encode` (memory-mapped): float, or of `precision`'s dtype; optionally checked
    against a row count."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        emb = np.load(path, mmap_mode="r")
    except (ValueError, EOFError) as e:  # EOFError: numpy's word for a 0-byte file
        raise InputError(f"{path}: not a .npy array file ({_why_not_npy(path, e)})") from e
    expected = "float" if precision == "float32" else f"{output_dtype(precision)} ({precision})"
    ok = emb.dtype.kind == "f" if precision == "float32" else emb.dtype == output_dtype(precision)
    if emb.ndim != 2 or not ok or len(emb) == 0:
        hint = ""
        if precision == "float32" and emb.dtype in (np.int8, np.uint8):
            hint = "; binary (int8) or ubinary (uint8) embeddings need their precision (--precision binary / ubinary)"
        raise InputError(
            f"{path}: expected a non-empty (rows, dim) {expected} array, got {emb.dtype} {emb.shape}{hint}"
        )
    if rows is not None and rows != len(emb):
        raise InputError(f"{path} has {len(emb)} rows but the texts file has {rows}")
    return emb
