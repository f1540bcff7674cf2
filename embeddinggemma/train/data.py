"""Training batches: rows (train/sources.py) -> prompted, tokenized, padded arrays, resumably.

Queries get the query prompt, documents the document prompt, or the title prompt when a title is given
(`encode.prompts.Prompts`), as sentence-transformers' encode_query / encode_document do. `Batches` orders
the rows (see its docstring) and collates each process's share of a global batch on grain's reader threads, ahead of the
step that consumes it. Sequences are padded to length buckets (the longest in the global batch, agreed
between processes), coarser than the encoder's (`batching.TRAIN_BUCKETS_PER_OCTAVE`: 32, 48, 64, 96,
128, ...) because a run compiles one train step per (query bucket, document bucket) pair.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

from embeddinggemma import sharding
from embeddinggemma.encode import batching
from embeddinggemma.encode.prompts import Prompts
from embeddinggemma.errors import DataError
from embeddinggemma.model.config import ModelConfig
from embeddinggemma.model.tokenizer import Tokenizer
from embeddinggemma.train.losses import MISSING
from embeddinggemma.train.sources import Example, Rows

logger = logging.getLogger(__name__)
T = TypeVar("T")
KEEP_EXCHANGES = 1024  # batches whose length exchange stays in the coordination service's store
ORDER = "grain-index-shuffle-v1"  # how rows are ordered; a checkpoint from another ordering cannot resume


def text_key(text: str) -> int:
    """A stable 31-bit key of a text: equal texts in a batch are false negatives of each other."""
    return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


class Collator:
    """Examples -> this process's part of a padded batch (see step.py for the arrays).

    `exchange` names the run's exchanges of padded lengths between processes (`sharding.process_max`): the
    same on every process and unique to the run, so two runs in one job never read each other's."""

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
        exchange: str = "run",
    ):
        self.q_len = max_query_length or model_cfg.max_seq_length
        self.d_len = max_doc_length or model_cfg.max_seq_length
        self.q_tok = Tokenizer(tokenizer_file, dataclasses.replace(model_cfg, max_seq_length=self.q_len))
        self.d_tok = Tokenizer(tokenizer_file, dataclasses.replace(model_cfg, max_seq_length=self.d_len))
        self.q_tok.check_prompt(prompts.query, "query_prompt")
        self.d_tok.check_prompt(prompts.document, "document_prompt")
        self.d_tok.check_prompt(prompts.title.format(title=""), "title_prompt")
        self.pad_id = model_cfg.pad_id
        self.prompts = prompts
        self.k = num_negatives
        self.mask_false_negatives = mask_false_negatives
        self.truncated = {"queries": 0, "documents": 0}  # texts cut to max_*_length on this host so far
        self._lock = threading.Lock()  # collation runs on grain's reader threads
        self.exchange = exchange  # names this run's length exchanges between processes: the same on every one

    def documents(self, ex: Example) -> list[str]:
        """Positive then exactly k negatives; a missing negative repeats the positive (masked by key)."""
        negatives = [self.prompts.format_document(n) for n in ex.negatives[: self.k]]
        positive = self.prompts.format_document(ex.positive, ex.title)
        return [positive, *negatives, *[positive] * (self.k - len(negatives))]

    def __call__(self, examples: Sequence[Example], *, row_offset: int = 0, step: int = 0) -> dict[str, np.ndarray]:
        """`row_offset`: index of examples[0] in the global batch (keeps position keys globally unique);
        `step`: names the batch when the processes agree on its padded lengths."""
        queries = [self.prompts.format_query(ex.query) for ex in examples]
        docs = [self.documents(ex) for ex in examples]
        q_ids = self._encode("queries", self.q_tok, queries)
        d_ids = self._encode("documents", self.d_tok, [t for row in docs for t in row])
        q_len = self._length(q_ids, self.q_len, step, "queries")
        d_len = self._length(d_ids, self.d_len, step, "documents")
        q_tokens, q_valid = batching.pad(q_ids, length=q_len, pad_id=self.pad_id)
        d_tokens, d_valid = batching.pad(d_ids, length=d_len, pad_id=self.pad_id)
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
        with self._lock:
            if truncated and not self.truncated[kind]:
                logger.warning(
                    "training %s longer than %d tokens are truncated (running count: truncated_%s in the metrics)",
                    kind,
                    tokenizer.max_seq_length,
                    kind,
                )
            self.truncated[kind] += truncated
        return ids

    def _length(self, ids: list[list[int]], max_len: int, step: int, kind: str) -> int:
        """The padded length of this global batch: the bucket of its longest sequence on any process."""
        name = lambda s: f"{self.exchange}/batch{s}/{kind}"  # noqa: E731
        forget = name(step - KEEP_EXCHANGES) if step >= KEEP_EXCHANGES else None  # far behind any prefetch
        longest = sharding.process_max(name(step), max(map(len, ids)), forget=forget)
        return batching.bucket_length(longest, max_len, batching.TRAIN_BUCKETS_PER_OCTAVE)


def shuffled(rows: Rows, seed: int) -> Any:
    """The rows in training order: grain's index shuffle, a new permutation each epoch (index i of epoch e
    is row len * e + i), each computed per index in O(1) memory."""
    import grain

    return grain.MapDataset.source(rows).shuffle(seed=seed)


class Batches:
    """Deterministic global batches of shuffled rows; each process collates only its own rows.

    Order: grain's index shuffle of the rows (a new permutation each epoch, computed per index in O(1)
    memory); global batch k is shuffled rows [kB, (k+1)B), and process p of P takes [kB + pL, kB + (p+1)L)
    with L = B/P. Batches run on across epoch boundaries, so no row is dropped. The position is the step
    alone, so a checkpoint that stores it resumes exactly.
    """

    def __init__(
        self,
        rows: Rows,
        collate: Collator,
        global_batch_size: int,
        seed: int,
        *,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.rows, self.collate, self.batch_size, self.seed = rows, collate, global_batch_size, seed
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % self.process_count:
            raise ValueError(f"global batch {global_batch_size} does not divide over {self.process_count} processes")
        self.local_size = global_batch_size // self.process_count
        if len(rows) < global_batch_size:
            raise DataError(f"{rows.name}: {len(rows)} examples are fewer than one global batch of {global_batch_size}")
        self.steps_per_epoch = len(rows) // global_batch_size
        self.shuffled = shuffled(rows, seed)

    def local_examples(self, step: int) -> list[Example]:
        start = step * self.batch_size + self.process_index * self.local_size
        return [self.shuffled[i] for i in range(start, start + self.local_size)]

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        """This process's part of global batch `step` (0-based), collated."""
        offset = self.process_index * self.local_size
        return self.collate(self.local_examples(step), row_offset=offset, step=step)

    def iterate(
        self, start: int, stop: int, *, prefetch: int, threads: int, then: Callable[[dict[str, np.ndarray]], T]
    ) -> Iterator[T]:
        """`then(batch)` for batches start..stop-1 in order. With `prefetch` > 0, `threads` grain threads
        prepare (collate and `then`) up to `prefetch` batches ahead of the one being consumed; with 0, each
        is prepared when asked for."""
        if prefetch == 0:
            return (then(self[k]) for k in range(start, stop))
        import grain

        steps = grain.MapDataset.range(start, stop).map(lambda k: then(self[k]))
        return iter(steps.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))

    def epoch(self, step: int) -> float:
        return step * self.batch_size / len(self.rows)

    def state(self, step: int) -> dict[str, Any]:
        """The data position after `step` steps, and what it depends on."""
        return {
            "step": step,
            "seed": self.seed,
            "num_examples": len(self.rows),
            "global_batch_size": self.batch_size,
            "order": ORDER,
        }

    def check_resume(self, state: dict[str, Any], step: int) -> None:
        """Refuse to resume when the data, seed, batch size or ordering changed since the checkpoint."""
        mine = self.state(step)
        changed = [k for k in mine if state.get(k) != mine[k]]
        if changed:
            raise DataError("cannot resume: " + ", ".join(f"{k} was {state.get(k)}, now {mine[k]}" for k in changed))
