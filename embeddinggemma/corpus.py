"""Corpus-scale encoding and search over text files: what the `embeddinggemma encode` and `search` commands run.

Input is a text file (one text a line; blank lines skipped, a row's id is its line number) or JSONL (a
`text` field, an optional `id`). `EncodeJob.prepare` validates the whole file in one cheap pass (so a bad
line 900,000 fails before a model is even loaded); `EncodeJob.run` then streams it through the model in
shards of `shard_size` texts.
Each finished shard is saved atomically in `OUT.partial/`; a rerun of the same command skips the shards
already there, so an interrupted run loses at most one shard of work and never duplicates one. The final
.npy is assembled under a temporary name and renamed, so the output path never holds a half-written file.

`precision` writes quantized embeddings (`embeddinggemma.quantization`): each shard is quantized as it is
finished, so int8/uint8 need ranges fixed before the first shard, from a calibration file of float
embeddings; the manifest records the precision and those ranges, so a resumed run never mixes encodings.
`search` takes float32 embeddings, or binary/ubinary ones (Hamming candidates rescored with float queries).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm.auto import tqdm

from embeddinggemma import quantization, vectors
from embeddinggemma.encoder import EmbeddingGemma
from embeddinggemma.files import check_outputs, write_atomic
from embeddinggemma.quantization import BINARY_PRECISIONS, Precision
from embeddinggemma.tokenizer import text_error

JSONL_SUFFIXES = (".jsonl", ".ndjson")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
IDS_WRITTEN = "ids-output"  # in OUT.partial: the --ids-output this run wrote (before the output)


class InputError(ValueError):
    """A user-supplied file cannot be used (missing, empty, not UTF-8, bad JSON, unwritable output)."""


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
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: invalid JSON ({e.msg})") from e
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


def _chunks(items: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _shard_path(work: Path, index: int) -> Path:
    return work / f"shard-{index:06d}.npy"


def check_manifest(file: Path, manifest: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Resume only a run made with the same input and settings (recorded in `file`); otherwise say what differs.

    `defaults` are the values of keys that manifests written before those keys existed lack.
    """
    work = file.parent
    if file.is_file():
        old = {**(defaults or {}), **json.loads(file.read_text())}
        changed = sorted(k for k in manifest.keys() | old.keys() if old.get(k) != manifest.get(k))
        if changed:
            what = ", ".join(_change(old, manifest, key) for key in changed)
            raise InputError(
                f"{work} holds an unfinished run with different {what}; "
                "rerun it with the same input and options to resume, or delete that directory to start over"
            )
    else:
        write_atomic(file, lambda f: f.write(json.dumps(manifest, indent=2).encode()))


def _change(old: dict[str, Any], new: dict[str, Any], key: str) -> str:
    """`key`, with its old and new values when they are short enough to read (not digests)."""
    values = old.get(key), new.get(key)
    if all(isinstance(v, str | int) and len(str(v)) <= 32 for v in values):
        return f"{key} (was {values[0]!r}, now {values[1]!r})"
    return key


def load_calibration(path: str | Path, precision: Precision) -> np.ndarray:
    """int8/uint8 ranges ((2, dim): each dim's min and max) from a .npy of float embeddings."""
    cal = load_embeddings(path)
    if not np.isfinite(cal).all():
        raise InputError(f"{path}: calibration embeddings hold NaN or inf")
    return quantization.quantization_ranges(cal, precision, cal)


@dataclass(frozen=True)
class EncodeJob:
    """An input validated and outputs known to be safe to write: everything checked before a model loads."""

    src: Path
    out: Path
    ids_out: Path | None  # one JSON line {"id": ...} per output row, if requested
    work: Path  # OUT.partial: the finished shards and the manifest of the run they belong to
    summary: InputSummary
    text_field: str
    shard_size: int
    precision: Precision = "float32"
    ranges: np.ndarray | None = None  # int8/uint8: (2, dim), from the calibration embeddings

    @classmethod
    def prepare(
        cls,
        src: str | Path,
        out: str | Path,
        *,
        ids_out: str | Path | None = None,
        text_field: str = "text",
        shard_size: int = 2048,
        overwrite: bool = False,
        precision: Precision = "float32",
        calibration: str | Path | None = None,
    ) -> EncodeJob:
        """Validate the input and the outputs: no output may be the input or another output, or exist
        already (unless `overwrite`), and each must be writable.

        `precision` int8/uint8 needs `calibration`, a .npy of float embeddings (e.g. a float32 `encode` of
        a sample of the corpus) whose per-dim min and max set the buckets of every shard; the same file
        quantizes queries the same way later. Ranges from the first shard instead would depend on the
        shard size and order, and could not be reproduced for the queries.
        """
        src, out = Path(src), Path(out)
        ids_out = Path(ids_out) if ids_out is not None else None
        if not isinstance(shard_size, int) or shard_size < 1:
            raise InputError(f"shard size must be a positive integer, got {shard_size!r}")
        quantization.check_precision(precision)
        ranges = None
        if precision in ("int8", "uint8"):
            if calibration is None:
                raise InputError(
                    f"precision {precision} needs calibration embeddings (a .npy of float embeddings, e.g. a "
                    "float32 encode of a sample of the corpus): their per-dim min and max fix the buckets "
                    "of every shard, and of the queries later"
                )
        elif calibration is not None:
            raise InputError(f"calibration embeddings set int8/uint8 ranges; precision {precision} uses none")
        summary = scan(src, text_field=text_field)
        work = out.with_name(out.name + ".partial")
        outputs = {"--output": out, "--ids-output": ids_out}
        inputs = [src] if calibration is None else [src, Path(calibration)]
        if ids_out is not None and ids_out.exists() and _ids_written(work) == str(ids_out.resolve()):
            # A run of this command stopped (disk full, killed) after writing --ids-output, which comes first:
            # that file is the run's own, and the rerun replaces it; the output must still be new.
            check_outputs(outputs, inputs, overwrite=True)
            check_outputs({"--output": out}, inputs, overwrite=overwrite)
        else:
            check_outputs(outputs, inputs, overwrite=overwrite)
        if calibration is not None:
            ranges = load_calibration(calibration, precision)
        return cls(src, out, ids_out, work, summary, text_field, shard_size, precision, ranges)

    def _records(self) -> Iterator[Record]:
        return iter_records(self.src, text_field=self.text_field)

    def run(
        self,
        model: EmbeddingGemma,
        *,
        model_id: str,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        batch_size: int = 32,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> np.ndarray:
        """Embed every row into `out` ((rows, dim) float32, or quantized to the job's precision), resuming
        finished shards; returns it memory-mapped.

        `model_id` names the checkpoint in the resume manifest, so a rerun with another model mixes nothing.
        """
        prefix = model.prompt_prefix(prompt_name, prompt)
        dim = model.check_dim(truncate_dim)
        precision, ranges = self.precision, self.ranges
        if ranges is not None and ranges.shape[1] != dim:
            raise InputError(f"the calibration embeddings are {ranges.shape[1]}-d but this encode writes {dim}-d ones")
        if precision in BINARY_PRECISIONS and dim % 8:
            # packed bytes alone would not say how many of the last byte's bits are dims, so search could not
            # embed queries at the right width
            raise InputError(f"precision {precision} packs 8 dims a byte: the dim must be a multiple of 8, got {dim}")
        rows, size = self.summary.count, self.shard_size
        manifest = {
            "version": MANIFEST_VERSION,
            "input_sha256": self.summary.sha256,
            "rows": rows,
            "text_field": self.text_field,
            "model": model_id,
            "dtype": model.dtype,
            "prompt": prefix,
            "dim": dim,
            "shard_size": size,
            "precision": precision,
        }
        if ranges is not None:
            manifest["ranges_sha256"] = hashlib.sha256(np.ascontiguousarray(ranges, "<f4").tobytes()).hexdigest()
        self.work.mkdir(parents=True, exist_ok=True)
        check_manifest(self.work / MANIFEST, manifest, defaults={"precision": "float32"})  # runs before precision
        n_shards = -(-rows // size)
        done = {i for i in range(n_shards) if _shard_path(self.work, i).is_file()}
        if done:
            log(f"resuming: {len(done)} of {n_shards} shards already done in {self.work}")
        initial = sum(min(size, rows - i * size) for i in done)
        with tqdm(total=rows, initial=initial, unit="text", desc="encode", disable=not progress) as bar:
            tokens, t0 = 0, time.perf_counter()

            def report(ids: list[list[int]], batch: np.ndarray) -> None:
                nonlocal tokens
                tokens += sum(len(ids[i]) for i in batch)
                bar.set_postfix_str(f"{tokens / (time.perf_counter() - t0):,.0f} tok/s", refresh=False)
                bar.update(len(batch))

            for index, shard in enumerate(_chunks(self._records(), size)):
                if index in done:
                    continue
                ids = model.tokenizer.encode([prefix + r.text for r in shard])
                emb = model.encode_ids(
                    ids,
                    truncate_dim=truncate_dim,
                    batch_size=batch_size,
                    show_progress_bar=False,
                    on_batch=functools.partial(report, ids),
                )
                if precision != "float32":
                    emb = quantization.quantize_embeddings(emb, precision, ranges=ranges)
                write_atomic(_shard_path(self.work, index), lambda f, emb=emb: np.save(f, emb))
        if self.ids_out is not None:
            ids_out = str(self.ids_out.resolve())
            write_atomic(self.work / IDS_WRITTEN, lambda f: f.write(ids_out.encode()))
            lines = (json.dumps({"id": r.id}) + "\n" for r in self._records())
            write_atomic(self.ids_out, lambda f: f.writelines(line.encode() for line in lines))
        width, dtype = quantization.output_width(precision, dim), quantization.output_dtype(precision)
        write_atomic(self.out, lambda f: _concatenate(self.work, n_shards, rows, width, dtype, f))
        shutil.rmtree(self.work)
        return np.load(self.out, mmap_mode="r")


def _ids_written(work: Path) -> str | None:
    file = work / IDS_WRITTEN
    return file.read_text(encoding="utf-8", errors="replace") if file.is_file() else None


def load_embeddings(path: str | Path, *, rows: int | None = None, precision: Precision = "float32") -> np.ndarray:
    """A 2-D .npy written by `encode` (memory-mapped): float, or of `precision`'s dtype; optionally checked
    against a row count."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        emb = np.load(path, mmap_mode="r")
    except ValueError as e:
        raise InputError(f"{path}: not a .npy array file ({e})") from e
    expected = "float" if precision == "float32" else f"{quantization.output_dtype(precision)} ({precision})"
    ok = emb.dtype.kind == "f" if precision == "float32" else emb.dtype == quantization.output_dtype(precision)
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


def _concatenate(work: Path, n_shards: int, rows: int, width: int, dtype: np.dtype, f: BinaryIO) -> None:
    """Stream the shards into one .npy (header, then rows), checking each shard's shape and dtype on the way."""
    dtype = np.dtype(dtype).newbyteorder("<")
    np.lib.format.write_array_header_1_0(f, {"descr": dtype.str, "fortran_order": False, "shape": (rows, width)})
    written = 0
    for index in range(n_shards):
        shard = np.load(_shard_path(work, index))
        if shard.ndim != 2 or shard.shape[1] != width or shard.dtype.newbyteorder("<") != dtype:
            raise InputError(f"{_shard_path(work, index)} is {shard.dtype} {shard.shape}; delete {work} and rerun")
        f.write(np.ascontiguousarray(shard, dtype).tobytes())
        written += len(shard)
    if written != rows:
        raise InputError(f"{work}: shards hold {written} rows, expected {rows}; delete {work} and rerun")


def search(
    model: EmbeddingGemma,
    queries: list[str],
    corpus_emb: np.ndarray,
    k: int,
    *,
    precision: Precision = "float32",
    rescore_multiplier: int = 4,
) -> list[list[tuple[int, float]]]:
    """(row, score) of the k best corpus rows for each query, best first.

    Queries get the "query" prompt and are truncated to the corpus embeddings' width (Matryoshka), so
    embeddings saved with `--truncate-dim` are searched at that width. Scores are cosines for a float32
    corpus; for a binary/ubinary one they are `quantization.binary_search`'s rescored dot products of the
    float query with the k x `rescore_multiplier` rows nearest in Hamming distance.
    """
    quantization.check_precision(precision, ("float32", *BINARY_PRECISIONS))
    full = model.config.embedding_dim
    width = corpus_emb.shape[1] * 8 if precision in BINARY_PRECISIONS else corpus_emb.shape[1]
    if width > full:
        raise InputError(f"the corpus embeddings are {width}-d but this model gives {full}-d embeddings")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if precision in BINARY_PRECISIONS:
        query_emb = model.encode_query(queries, truncate_dim=width)
        best, best_scores = quantization.binary_search(
            query_emb, corpus_emb, precision, top_k=k, rescore_multiplier=rescore_multiplier
        )
        return [list(zip(map(int, i), map(float, s), strict=True)) for i, s in zip(best, best_scores, strict=True)]
    scores = model.similarity(model.encode_query(queries, truncate_dim=width), corpus_emb)
    best, best_scores = vectors.top_k(scores, k)
    return [list(zip(map(int, i), map(float, s), strict=True)) for i, s in zip(best, best_scores, strict=True)]
