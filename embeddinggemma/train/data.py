"""Training data: JSONL (query, positive, negatives, title) -> padded token batches, resumably.

One example a line: {"query": str, "positive": str, "negatives": [str, ...], "title": str} (negatives
and title optional; the title belongs to the positive). Queries get the query prompt, documents the
document prompt, or "title: {title} | text: " when a title is given, as sentence-transformers'
encode_query / encode_document do.

Order: epoch e visits the examples in permutation(seed, e), in global batches of B (the remainder is
dropped); process p of P takes rows [p B/P, (p+1) B/P) of each batch and tokenizes only those. The
position (epoch, batch) is all the iterator's state, so a checkpoint that stores it resumes exactly.
Sequences are padded to length buckets (the longest in the global batch), coarser than the encoder's
(`batching.TRAIN_BUCKETS_PER_OCTAVE`: 32, 48, 64, 96, 128, ...) because a run compiles one train step
per (query bucket, document bucket) pair.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from embeddinggemma import batching
from embeddinggemma.config import ModelConfig
from embeddinggemma.tokenizer import Tokenizer
from embeddinggemma.train.losses import MISSING

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A training or evaluation file cannot be read; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Example:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    title: str | None = None


def _parse(line: str) -> Example:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"query", "positive", "negatives", "title"})
    if unknown:
        raise ValueError(f"unknown keys {unknown}")
    for key in ("query", "positive"):
        if not isinstance(obj.get(key), str):
            raise ValueError(f"{key!r} must be a string")
    negatives = obj.get("negatives", [])
    if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
        raise ValueError("'negatives' must be a list of strings")
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        raise ValueError("'title' must be a string")
    return Example(obj["query"], obj["positive"], tuple(negatives), title)


def read_jsonl(path: str | Path, *, skip_malformed: bool = False) -> list[Example]:
    """All examples of a JSONL file; blank lines are ignored, a malformed one raises (or is counted)."""
    examples, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                examples.append(_parse(line))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                if not skip_malformed:
                    raise DataError(f"{path}:{lineno}: malformed example: {e}") from None
                skipped += 1
    if skipped:
        logger.warning("%s: skipped %d malformed lines (skip_malformed=true)", path, skipped)
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


@dataclasses.dataclass(frozen=True)
class Prompts:
    query: str
    document: str
    title: str  # format string with {title}

    @classmethod
    def for_model(cls, model_cfg: ModelConfig, query: str | None, document: str | None, title: str) -> Prompts:
        """Explicit prompts, else the model's "query" / "document" prompts (config_sentence_transformers.json)."""
        prompts = model_cfg.prompt_dict
        return cls(
            query if query is not None else prompts.get("query", ""),
            document if document is not None else prompts.get("document", ""),
            title,
        )

    def format_query(self, text: str) -> str:
        return self.query + text

    def format_document(self, text: str, title: str | None = None) -> str:
        return (self.title.format(title=title) if title is not None else self.document) + text


def text_key(text: str) -> int:
    """A stable 31-bit key of a text: equal texts in a batch are false negatives of each other."""
    return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


def _global_max(n: int) -> int:
    """Max over all processes (every process must pad to the same shape)."""
    if jax.process_count() == 1:
        return n
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(n))))


class Collator:
    """Examples -> this process's part of a padded batch (see step.py for the arrays)."""

    def __init__(
        self,
        tokenizer_file: str | Path,
        model_cfg: ModelConfig,
        prompts: Prompts,
        *,
        num_negatives: int,
        max_query_length: int | None = None,
        max_doc_length: int | None = None,
        mask_false_negatives: bool = True,
    ):
        self.q_len = max_query_length or model_cfg.max_seq_length
        self.d_len = max_doc_length or model_cfg.max_seq_length
        self.q_tok = Tokenizer(tokenizer_file, dataclasses.replace(model_cfg, max_seq_length=self.q_len))
        self.d_tok = Tokenizer(tokenizer_file, dataclasses.replace(model_cfg, max_seq_length=self.d_len))
        self.pad_id = model_cfg.pad_id
        self.prompts = prompts
        self.k = num_negatives
        self.mask_false_negatives = mask_false_negatives
        self.truncated = {"queries": 0, "documents": 0}  # texts cut to max_*_length on this host so far

    def documents(self, ex: Example) -> list[str]:
        """Positive then exactly k negatives; a missing negative repeats the positive (masked by key)."""
        negatives = [self.prompts.format_document(n) for n in ex.negatives[: self.k]]
        positive = self.prompts.format_document(ex.positive, ex.title)
        return [positive, *negatives, *[positive] * (self.k - len(negatives))]

    def __call__(self, examples: Sequence[Example], *, row_offset: int = 0) -> dict[str, np.ndarray]:
        """`row_offset`: index of examples[0] in the global batch (keeps position keys globally unique)."""
        queries = [self.prompts.format_query(ex.query) for ex in examples]
        docs = [self.documents(ex) for ex in examples]
        q_ids = self._encode("queries", self.q_tok, queries)
        d_ids = self._encode("documents", self.d_tok, [t for row in docs for t in row])
        q_tokens, q_valid = batching.pad(q_ids, length=self._length(q_ids, self.q_len), pad_id=self.pad_id)
        d_tokens, d_valid = batching.pad(d_ids, length=self._length(d_ids, self.d_len), pad_id=self.pad_id)
        b, k1 = len(examples), 1 + self.k
        if self.mask_false_negatives:
            q_keys = np.array([text_key(t) for t in queries], np.int32)
            d_keys = np.array([[text_key(t) for t in row] for row in docs], np.int32)
        else:  # every row its own key: only missing negatives are masked
            d_keys = row_offset * k1 + np.arange(b * k1, dtype=np.int32).reshape(b, k1)
            q_keys = row_offset + np.arange(b, dtype=np.int32)
        present = np.array([[j == 0 or j <= len(ex.negatives) for j in range(k1)] for ex in examples])
        d_keys = np.where(present, d_keys, MISSING).astype(np.int32)
        return {
            "q_ids": q_tokens,
            "q_valid": q_valid,
            "d_ids": d_tokens.reshape(b, k1, -1),
            "d_valid": d_valid.reshape(b, k1, -1),
            "q_keys": q_keys,
            "d_keys": d_keys,
        }

    def _encode(self, kind: str, tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
        """Tokenize and count truncations: one warning per run, the running count goes to the metrics."""
        ids, truncated = tokenizer.encode_counting(texts)
        if truncated and not self.truncated[kind]:
            logger.warning(
                "training %s longer than %d tokens are truncated (running count: truncated_%s in the metrics)",
                kind,
                tokenizer.max_seq_length,
                kind,
            )
        self.truncated[kind] += truncated
        return ids

    @staticmethod
    def _length(ids: list[list[int]], max_len: int) -> int:
        """The padded length of this global batch: the bucket of its longest sequence on any host."""
        return batching.bucket_length(_global_max(max(map(len, ids))), max_len, batching.TRAIN_BUCKETS_PER_OCTAVE)


class BatchIterator:
    """Deterministic, resumable global batches; yields this process's rows only."""

    def __init__(
        self,
        examples: Sequence[Example],
        collate: Collator,
        global_batch_size: int,
        seed: int,
        *,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.examples, self.collate, self.batch_size, self.seed = examples, collate, global_batch_size, seed
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % self.process_count:
            raise ValueError(f"global batch {global_batch_size} does not divide over {self.process_count} processes")
        self.steps_per_epoch = len(examples) // global_batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"{len(examples)} examples are fewer than one global batch of {global_batch_size}")
        self.epoch, self.batch = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        local = self.batch_size // self.process_count
        start = self.batch * self.batch_size + self.process_index * local
        batch = self.collate(
            [self.examples[i] for i in self._order[start : start + local]], row_offset=self.process_index * local
        )
        self.batch += 1
        if self.batch == self.steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        return batch

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "num_examples": len(self.examples),
            "global_batch_size": self.batch_size,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue at a saved position; refuse if the data, seed or batch size changed."""
        mine = self.state()
        changed = [k for k in ("seed", "num_examples", "global_batch_size") if state[k] != mine[k]]
        if changed:
            raise DataError("cannot resume: " + ", ".join(f"{k} was {state[k]}, now {mine[k]}" for k in changed))
        self.epoch, self.batch = state["epoch"], state["batch"]
        self._order = self._permutation(self.epoch)
