"""Corpus-scale encoding of a text or JSONL file (`corpus.readers`) into one .npy: what `embeddinggemma encode`
runs, and what mining embeds through.

`EncodeJob.prepare` validates the whole file in one cheap pass (so a bad
line 900,000 fails before a model is even loaded); `EncodeJob.run` then streams it through the model in
shards of `shard_size` texts.
Each finished shard is saved atomically in `OUT.partial/`; a rerun of the same command skips the shards
already there, so an interrupted run loses at most one shard of work and never duplicates one. The final
.npy is assembled under a temporary name and renamed, so the output path never holds a half-written file.

`precision` writes quantized embeddings (`embeddinggemma.encode.precision`): each shard is quantized as it is
finished, so int8/uint8 need ranges fixed before the first shard, from a calibration file of float
embeddings; the manifest records the precision and those ranges, so a resumed run never mixes encodings.
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
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm.auto import tqdm

from embeddinggemma.corpus.readers import InputSummary, Record, iter_records, load_embeddings, scan
from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.encode.precision import (
    BINARY_PRECISIONS,
    Precision,
    check_precision,
    output_dtype,
    output_width,
    quantization_ranges,
    quantize_embeddings,
)
from embeddinggemma.errors import InputError, check_int, parse_json
from embeddinggemma.files import check_outputs, write_atomic

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
IDS_WRITTEN = "ids-output"  # in OUT.partial: the --ids-output this run wrote (before the output)


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
        old = {**(defaults or {}), **parse_json(file.read_bytes(), str(file))}
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
    return quantization_ranges(cal, precision, cal)


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
        check_int(shard_size, "shard_size")
        check_precision(precision)
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
                    emb = quantize_embeddings(emb, precision, ranges=ranges)
                write_atomic(_shard_path(self.work, index), lambda f, emb=emb: np.save(f, emb))
        if self.ids_out is not None:
            ids_out = str(self.ids_out.resolve())
            write_atomic(self.work / IDS_WRITTEN, lambda f: f.write(ids_out.encode()))
            lines = (json.dumps({"id": r.id}) + "\n" for r in self._records())
            write_atomic(self.ids_out, lambda f: f.writelines(line.encode() for line in lines))
        width, dtype = output_width(precision, dim), output_dtype(precision)
        write_atomic(self.out, lambda f: _concatenate(self.work, n_shards, rows, width, dtype, f))
        shutil.rmtree(self.work)
        return np.load(self.out, mmap_mode="r")


def _ids_written(work: Path) -> str | None:
    file = work / IDS_WRITTEN
    return file.read_text(encoding="utf-8", errors="replace") if file.is_file() else None


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
