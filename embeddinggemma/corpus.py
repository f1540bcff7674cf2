"""Corpus-scale encoding and search over text files: what the `embeddinggemma encode` and `search` commands run.

Input is a text file (one text a line; blank lines skipped, a row's id is its line number) or JSONL (a
`text` field, an optional `id`). `EncodeJob.prepare` validates the whole file in one cheap pass (so a bad
line 900,000 fails before a model is even loaded); `EncodeJob.run` then streams it through the model in
shards of `shard_size` texts.
Each finished shard is saved atomically in `OUT.partial/`; a rerun of the same command skips the shards
already there, so an interrupted run loses at most one shard of work and never duplicates one. The final
.npy is assembled under a temporary name and renamed, so the output path never holds a half-written file.
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

from embeddinggemma import vectors
from embeddinggemma.encoder import EmbeddingGemma
from embeddinggemma.files import check_outputs, write_atomic
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


def check_manifest(file: Path, manifest: dict[str, Any]) -> None:
    """Resume only a run made with the same input and settings (recorded in `file`); otherwise say what differs."""
    work = file.parent
    if file.is_file():
        old = json.loads(file.read_text())
        changed = sorted(k for k in manifest.keys() | old.keys() if old.get(k) != manifest.get(k))
        if changed:
            raise InputError(
                f"{work} holds an unfinished run with different {', '.join(changed)}; "
                "rerun it with the same input and options to resume, or delete that directory to start over"
            )
    else:
        write_atomic(file, lambda f: f.write(json.dumps(manifest, indent=2).encode()))


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
    ) -> EncodeJob:
        """Validate the input and the outputs: no output may be the input or another output, or exist
        already (unless `overwrite`), and each must be writable."""
        src, out = Path(src), Path(out)
        ids_out = Path(ids_out) if ids_out is not None else None
        if not isinstance(shard_size, int) or shard_size < 1:
            raise InputError(f"shard size must be a positive integer, got {shard_size!r}")
        summary = scan(src, text_field=text_field)
        work = out.with_name(out.name + ".partial")
        outputs = {"--output": out, "--ids-output": ids_out}
        if ids_out is not None and ids_out.exists() and _ids_written(work) == str(ids_out.resolve()):
            # A run of this command stopped (disk full, killed) after writing --ids-output, which comes first:
            # that file is the run's own, and the rerun replaces it; the output must still be new.
            check_outputs(outputs, [src], overwrite=True)
            check_outputs({"--output": out}, [src], overwrite=overwrite)
        else:
            check_outputs(outputs, [src], overwrite=overwrite)
        return cls(src, out, ids_out, work, summary, text_field, shard_size)

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
        """Embed every row into `out` (float32, (rows, dim)), resuming finished shards; returns it memory-mapped.

        `model_id` names the checkpoint in the resume manifest, so a rerun with another model mixes nothing.
        """
        prefix = model.prompt_prefix(prompt_name, prompt)
        dim = model.check_dim(truncate_dim)
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
        }
        self.work.mkdir(parents=True, exist_ok=True)
        check_manifest(self.work / MANIFEST, manifest)
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
                write_atomic(_shard_path(self.work, index), lambda f, emb=emb: np.save(f, emb))
        if self.ids_out is not None:
            ids_out = str(self.ids_out.resolve())
            write_atomic(self.work / IDS_WRITTEN, lambda f: f.write(ids_out.encode()))
            lines = (json.dumps({"id": r.id}) + "\n" for r in self._records())
            write_atomic(self.ids_out, lambda f: f.writelines(line.encode() for line in lines))
        write_atomic(self.out, lambda f: _concatenate(self.work, n_shards, rows, dim, f))
        shutil.rmtree(self.work)
        return np.load(self.out, mmap_mode="r")


def _ids_written(work: Path) -> str | None:
    file = work / IDS_WRITTEN
    return file.read_text(encoding="utf-8", errors="replace") if file.is_file() else None


def load_embeddings(path: str | Path, *, rows: int | None = None) -> np.ndarray:
    """A 2-D float .npy written by `encode` (memory-mapped), optionally checked against a row count."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        emb = np.load(path, mmap_mode="r")
    except ValueError as e:
        raise InputError(f"{path}: not a .npy array file ({e})") from e
    if emb.ndim != 2 or emb.dtype.kind != "f" or len(emb) == 0:
        raise InputError(f"{path}: expected a non-empty (rows, dim) float array, got {emb.dtype} {emb.shape}")
    if rows is not None and rows != len(emb):
        raise InputError(f"{path} has {len(emb)} rows but the texts file has {rows}")
    return emb


def _concatenate(work: Path, n_shards: int, rows: int, dim: int, f: BinaryIO) -> None:
    """Stream the shards into one .npy (header, then rows), checking each shard's shape on the way."""
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    written = 0
    for index in range(n_shards):
        shard = np.load(_shard_path(work, index))
        if shard.ndim != 2 or shard.shape[1] != dim:
            raise InputError(f"{_shard_path(work, index)} has shape {shard.shape}; delete {work} and rerun")
        f.write(np.ascontiguousarray(shard, "<f4").tobytes())
        written += len(shard)
    if written != rows:
        raise InputError(f"{work}: shards hold {written} rows, expected {rows}; delete {work} and rerun")


def search(model: EmbeddingGemma, queries: list[str], corpus_emb: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """(row, cosine score) of the k best corpus rows for each query, best first.

    Queries get the "query" prompt and are truncated to the corpus embeddings' width (Matryoshka), so
    embeddings saved with `--truncate-dim` are searched at that width.
    """
    full, width = model.config.embedding_dim, corpus_emb.shape[1]
    if width > full:
        raise InputError(f"the corpus embeddings are {width}-d but this model gives {full}-d embeddings")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    scores = model.similarity(model.encode_query(queries, truncate_dim=width), corpus_emb)
    best, best_scores = vectors.top_k(scores, k)
    return [list(zip(map(int, i), map(float, s), strict=True)) for i, s in zip(best, best_scores, strict=True)]
