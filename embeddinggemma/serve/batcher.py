"""Dynamic batching for `embeddinggemma serve`: the texts of concurrent requests packed into encoder batches.

Each request's sequences (token ids already framed by the tokenizer) join one queue per length bucket: two
buckets per doubling (32, 48, 64, 96, 128, 192, ...), coarser than `encode`'s eight, so that concurrent texts
of similar length meet in one queue and fewer shapes need compiling. One worker thread owns the device: it
takes the bucket whose oldest text has waited longest and packs up to that bucket's largest row count of its
texts, oldest first. The batch runs at the smallest compiled row count that holds them, and the rows that
would be padding go to the oldest queued texts of shorter buckets (they cost nothing more: the rows run
anyway). While the device runs a batch, the worker packs the next one when a full batch is already waiting
(otherwise it collects the running batch first, so that late arrivals still join the next one). A partial
batch leaves once its oldest text has waited `batch_timeout` seconds.

Row counts: per bucket, the largest is the largest power of two with rows x length <= max_batch_tokens and
rows <= max_batch_size (at least one row); below it, every `row_step`-th smaller power down to one row, all
rounded up to a multiple of the mesh's batch shards. A lone short text then runs a one-row batch, not a
full one (on a CPU, padding rows cost as much as real ones). `warm_up` compiles (or loads from JAX's
persistent cache) every shape before the batcher accepts work, so no request waits for a compile; it compiles
`warmup_threads` shapes at a time (XLA compiles with the GIL released).

Rows of a batch do not interact, so a vector does not depend on its batch-mates' texts; only the batch's
shape (its row count, its padded length, the row a text lands on) can change the float32 rounding, by up to
~3e-7 per coordinate on the tiny test model on XLA:CPU (tests/serve/test_server.py checks 32 concurrent clients
against one-at-a-time requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import jax
import numpy as np

from embeddinggemma.encode import batching
from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.errors import check_int

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds max_queue texts already: retry later (HTTP 429)."""


class NotAccepting(Exception):
    """The batcher is still warming up, or shutting down (HTTP 503)."""


SERVE_BUCKETS_PER_OCTAVE = 2


def row_counts(
    length: int, max_batch_tokens: int, max_batch_size: int, multiple: int = 1, step: int = 2
) -> tuple[int, ...]:
    """The compiled row counts of one length bucket, ascending: the largest power of two with rows x length
    <= max_batch_tokens and rows <= max_batch_size (at least 1), then every power of `step` below it down to
    one row, each rounded up to a multiple of `multiple`."""
    most = 1 << (max(1, min(max_batch_tokens // length, max_batch_size)).bit_length() - 1)
    counts, n = {most}, 1
    while n < most:
        counts.add(n)
        n *= step
    return tuple(sorted({batching.padded_rows(n, multiple) for n in counts}))


def platform_batching(platform: str) -> tuple[int, int]:
    """(max_batch_tokens, row_step) by default on `platform`: on a CPU padding rows cost as much as real ones,
    so small batches get every power of two; on an accelerator a small batch costs about what a few rows do,
    and every 4th power keeps the warm-up short."""
    return (1024, 2) if platform == "cpu" else (16384, 4)


def batch_shapes(
    max_seq_length: int,
    max_length: int,
    max_batch_tokens: int,
    max_batch_size: int,
    multiple: int = 1,
    row_step: int = 2,
) -> dict[int, tuple[int, ...]]:
    """{length bucket: its compiled row counts} for texts of at most `max_length` tokens (see `row_counts`):
    every shape a batcher compiles before it accepts work."""
    longest = batching.bucket_length(max_length, max_seq_length, SERVE_BUCKETS_PER_OCTAVE)
    buckets = [b for b in batching.length_buckets(max_seq_length, SERVE_BUCKETS_PER_OCTAVE) if b <= longest]
    return {b: row_counts(b, max_batch_tokens, max_batch_size, multiple, row_step) for b in buckets}


@dataclass(frozen=True)
class BatchReport:
    """What one device batch did, for metrics."""

    texts: int
    rows: int
    length: int
    tokens: int  # real tokens (no padding)
    seconds: float  # dispatch to result on the host
    waits: list[float]  # each text's time in the queue before its batch was dispatched


@dataclass(eq=False)
class Request:
    """One caller's sequences; `future` (of the caller's event loop) resolves to their (n, dim) vectors."""

    ids: Sequence[Sequence[int]]
    out: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    remaining: int
    cancelled: bool = False


@dataclass(eq=False)
class _Text:
    request: Request
    index: int
    seq: int  # arrival order
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """The queue and the worker thread. `start()` warms up and then serves; `submit` + `await future` from
    an event loop; `cancel` drops a request's queued texts; `close()` serves what is queued and stops."""

    def __init__(
        self,
        model: EmbeddingGemma,
        *,
        max_batch_tokens: int,
        max_batch_size: int = 256,
        max_queue: int = 4096,
        batch_timeout: float = 0.002,
        max_length: int | None = None,
        row_step: int = 2,
        warmup_threads: int = 1,
        on_batch: Callable[[BatchReport], None] | None = None,
    ):
        cfg = model.config
        self.model = model
        self.max_length = min(max_length or cfg.max_seq_length, cfg.max_seq_length)
        self.rows = batch_shapes(
            cfg.max_seq_length, self.max_length, max_batch_tokens, max_batch_size, model.batch_multiple, row_step
        )
        buckets = list(self.rows)
        self.max_queue = max_queue
        self.batch_timeout = batch_timeout
        self.on_batch = on_batch
        self.warmup_threads = check_int(warmup_threads, "warmup_threads")
        self.warmup_seconds: float | None = None
        self.error: BaseException | None = None  # why warm-up failed
        self._queues: dict[int, deque[_Text]] = {b: deque() for b in buckets}
        self._depth = 0
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._state = "new"  # -> warming -> ready -> closing -> closed (or failed)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the caller's side

    @property
    def state(self) -> str:
        return self._state

    @property
    def depth(self) -> int:
        """Texts queued and not yet in a batch."""
        return self._depth

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The (rows, length) batch shapes this batcher runs, all compiled by the warm-up."""
        return [(rows, length) for length, counts in self.rows.items() for rows in counts]

    def start(self) -> None:
        """Start the worker thread: it warms up every shape, then the batcher accepts work."""
        with self._cond:
            if self._state != "new":
                raise RuntimeError(f"batcher already started ({self._state})")
            self._state = "warming"
        self._thread = threading.Thread(target=self._run, name="embeddinggemma-batcher", daemon=True)
        self._thread.start()

    def submit(self, ids: Sequence[Sequence[int]], loop: asyncio.AbstractEventLoop) -> Request:
        """Queue framed sequences (each at most max_length tokens); their vectors arrive in the returned
        request's future. Raises NotAccepting or QueueFull."""
        if not ids:
            raise ValueError("nothing to embed")
        too_long = [len(x) for x in ids if len(x) > self.max_length]
        if too_long:
            raise ValueError(f"a sequence of {too_long[0]} tokens is over this batcher's {self.max_length}")
        request = Request(
            ids, np.zeros((len(ids), self.model.config.embedding_dim), np.float32), loop.create_future(), loop, len(ids)
        )
        with self._cond:
            if self._state != "ready":
                raise NotAccepting("warming up" if self._state in ("new", "warming") else "shutting down")
            if self._depth and self._depth + len(ids) > self.max_queue:
                raise QueueFull(f"{self._depth} texts are queued (the limit is {self.max_queue})")
            for i, x in enumerate(ids):
                self._queues[self._bucket(len(x))].append(_Text(request, i, next(self._seq)))
            self._depth += len(ids)
            self._cond.notify()
        return request

    def cancel(self, request: Request) -> int:
        """Drop the request's texts that are still queued (its client went away); returns how many."""
        with self._cond:
            if request.cancelled:
                return 0
            request.cancelled = True
            removed = 0
            for q in self._queues.values():
                keep = [t for t in q if t.request is not request]
                removed += len(q) - len(keep)
                if len(keep) != len(q):
                    q.clear()
                    q.extend(keep)
            self._depth -= removed
        return removed

    def close(self, timeout: float | None = None) -> None:
        """Accept nothing more, embed what is queued, finish the batch in flight, stop the worker."""
        with self._cond:
            if self._state in ("new", "closed"):
                self._state = "closed"
                return
            if self._state != "failed":
                self._state = "closing"
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        try:
            self._warm_up()
        except BaseException as e:  # reported by the server (health stays 503) and logged
            logger.exception("warm-up failed")
            self.error = e
            with self._cond:
                self._state = "failed"
            return
        pending = None
        while True:
            batch = self._take(wait=pending is None)
            launched = self._launch(*batch) if batch else None
            if pending is not None:
                self._finish(*pending)
            if batch is None and pending is None:
                break  # closing, and nothing left
            pending = launched
        with self._cond:
            self._state = "closed"

    def _warm_up(self) -> None:
        """Run one batch of every shape, so that no request waits for a compile."""
        cfg = self.model.config
        start = time.perf_counter()

        def run(shape: tuple[int, int]) -> None:
            rows, length = shape
            if self._state != "warming":
                return
            t = time.perf_counter()
            dummy = [[cfg.bos_id, *[cfg.pad_id] * (length - 2), cfg.eos_id]]  # exactly `length` tokens
            self.model.collect(self.model.dispatch(dummy, rows=rows, length=length), 1)
            logger.info("warm-up: batch %d x %d ready in %.2f s", rows, length, time.perf_counter() - t)

        # the longest shapes first: they take longest to compile, so the threads finish together
        order = sorted(self.shapes, key=lambda s: (-s[1], -s[0]))
        pool = ThreadPoolExecutor(self.warmup_threads, thread_name_prefix="embeddinggemma-warm-up")
        try:
            list(pool.map(run, order))  # re-raises the first failure
        finally:
            pool.shutdown(cancel_futures=True)  # after a failure, compile nothing more
        if self._state != "warming":
            return
        self.warmup_seconds = time.perf_counter() - start
        logger.info("ready: %d batch shapes warmed up in %.1f s", len(self.shapes), self.warmup_seconds)
        with self._cond:  # after the log line: whoever sees "ready" (a /health poll) finds it logged
            if self._state == "warming":
                self._state = "ready"

    def _oldest_bucket(self) -> int | None:
        heads = [(q[0].seq, b) for b, q in self._queues.items() if q]
        return min(heads)[1] if heads else None

    def _bucket(self, length: int) -> int:
        return batching.bucket_length(length, self.model.config.max_seq_length, SERVE_BUCKETS_PER_OCTAVE)

    def _take(self, *, wait: bool) -> tuple[list[_Text], int, int] | None:
        """The next batch: from the bucket of the oldest queued text (see `_pack`). Without `wait`, only a full
        batch (or None); with it, waits for work, and for a partial batch to fill until its oldest text has
        waited batch_timeout. None when closing and the queue is empty."""
        with self._cond:
            while True:
                bucket = self._oldest_bucket()
                if bucket is None:
                    if not wait or self._state != "ready":
                        return None
                    self._cond.wait()
                    continue
                fits = sum(len(q) for b, q in self._queues.items() if b <= bucket)
                if fits < self.rows[bucket][-1] and self._state == "ready":
                    if not wait:
                        return None
                    left = self._queues[bucket][0].enqueued + self.batch_timeout - time.perf_counter()
                    if left > 0:
                        self._cond.wait(left)
                        continue
                return self._pack(bucket)

    def _pack(self, bucket: int) -> tuple[list[_Text], int, int]:
        """(texts, rows, length): up to the bucket's largest row count of its texts, oldest first; the rest of
        the smallest row count that holds them goes to the oldest texts of shorter buckets (those rows would
        be padding)."""
        q = self._queues[bucket]
        batch = [q.popleft() for _ in range(min(self.rows[bucket][-1], len(q)))]
        rows = next(r for r in self.rows[bucket] if r >= len(batch))
        while len(batch) < rows:
            heads = [(q[0].seq, b) for b, q in self._queues.items() if b < bucket and q]
            if not heads:
                break
            batch.append(self._queues[min(heads)[1]].popleft())
        self._depth -= len(batch)
        return batch, rows, bucket

    def _launch(
        self, batch: list[_Text], rows: int, length: int
    ) -> tuple[list[_Text], jax.Array, float, int, int] | None:
        start = time.perf_counter()
        try:
            ids = [t.request.ids[t.index] for t in batch]
            return batch, self.model.dispatch(ids, rows=rows, length=length), start, rows, length
        except Exception as e:
            self._fail(batch, e)
            return None

    def _finish(self, batch: list[_Text], emb: jax.Array, start: float, rows: int, length: int) -> None:
        try:
            vectors = self.model.collect(emb, len(batch))
        except Exception as e:
            self._fail(batch, e)
            return
        seconds = time.perf_counter() - start
        for t, vector in zip(batch, vectors, strict=True):
            request = t.request
            if request.cancelled:
                continue
            request.out[t.index] = vector
            request.remaining -= 1
            if request.remaining == 0:
                _call_soon(request, _resolve, request.future, request.out)
        if self.on_batch is not None:
            tokens = sum(len(t.request.ids[t.index]) for t in batch)
            report = BatchReport(len(batch), rows, length, tokens, seconds, [start - t.enqueued for t in batch])
            try:
                self.on_batch(report)
            except Exception:
                logger.exception("on_batch callback failed")

    def _fail(self, batch: list[_Text], error: Exception) -> None:
        logger.error("a batch of %d texts failed: %s", len(batch), error, exc_info=error)
        for request in {id(t.request): t.request for t in batch}.values():
            _call_soon(request, _reject, request.future, error)


def _call_soon(request: Request, fn: Callable, *args: object) -> None:
    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting any more
        request.loop.call_soon_threadsafe(fn, *args)


def _resolve(future: asyncio.Future, value: np.ndarray) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
