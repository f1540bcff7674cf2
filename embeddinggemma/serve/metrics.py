"""The server's Prometheus metrics (one registry per server) and its access log (one JSON line per request)."""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from embeddinggemma.serve.batcher import Batcher, BatchReport

access_logger = logging.getLogger("embeddinggemma.access")

ENDPOINTS = ("/v1/embeddings", "/embed", "/v1/models", "/info", "/health", "/metrics")
QUIET_WHEN_OK = ("/health", "/metrics")  # polled: not access-logged when they answer 200


class Metrics:
    """The Prometheus metrics of one server (its own registry)."""

    def __init__(self, batcher: Batcher):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        latency_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.requests = Counter(
            "embeddinggemma_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.errors = Counter(
            "embeddinggemma_request_errors", "error responses (4xx, 5xx) by endpoint and code", ["endpoint", "code"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "embeddinggemma_request_seconds", "request latency", ["endpoint"], buckets=latency_buckets, registry=r
        )
        self.queue_wait = Histogram(
            "embeddinggemma_queue_seconds", "time a text waited in the queue for its batch", buckets=latency_buckets,
            registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "embeddinggemma_batch_seconds", "device batch time, dispatch to result", buckets=latency_buckets, registry=r
        )
        self.batch_texts = Histogram(
            "embeddinggemma_batch_texts", "texts per device batch", buckets=[2**i for i in range(11)], registry=r
        )
        self.batch_fill = Histogram(
            "embeddinggemma_batch_fill", "real tokens / padded tokens of each batch",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), registry=r,
        )  # fmt: skip
        self.texts = Counter("embeddinggemma_texts", "texts embedded", registry=r)
        self.tokens = Counter("embeddinggemma_tokens", "tokens embedded (without padding)", registry=r)
        self.cancelled = Counter(
            "embeddinggemma_cancelled_texts", "queued texts dropped because their client disconnected", registry=r
        )
        Gauge("embeddinggemma_queue_depth", "texts waiting for a batch", registry=r).set_function(lambda: batcher.depth)
        Gauge("embeddinggemma_ready", "1 once every batch shape is compiled", registry=r).set_function(
            lambda: float(batcher.state == "ready")
        )
        Gauge(
            "embeddinggemma_compiled_shapes", "batch shapes compiled (or loaded from the cache) so far", registry=r
        ).set_function(lambda: len(batcher.model.compiled_shapes))
        Gauge("embeddinggemma_warmup_seconds", "time to compile every batch shape at start", registry=r).set_function(
            lambda: batcher.warmup_seconds or 0.0
        )
        Gauge(
            "embeddinggemma_tokens_per_second", "tokens embedded per second over the last 10 s", registry=r
        ).set_function(self._recent_rate)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def batch(self, report: BatchReport) -> None:
        """Called by the batcher's worker thread after each batch."""
        self.batch_seconds.observe(report.seconds)
        self.batch_texts.observe(report.texts)
        self.batch_fill.observe(report.tokens / (report.rows * report.length))
        self.texts.inc(report.texts)
        self.tokens.inc(report.tokens)
        for wait in report.waits:
            self.queue_wait.observe(wait)
        with self._lock:
            self._recent.append((time.monotonic(), report.tokens))

    def _recent_rate(self, window: float = 10.0) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - window:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / window

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)


class AccessLog:
    """ASGI middleware: request metrics, and one JSON line per request on the embeddinggemma.access logger."""

    def __init__(self, app: Callable, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            path = scope.get("path", "")
            self.metrics.request(path if path in ENDPOINTS else "other", status[0], seconds)
            if not (path in QUIET_WHEN_OK and status[0] == 200):
                client = scope.get("client")
                line = {
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                    "method": scope.get("method"),
                    "path": path,
                    "status": status[0],
                    "ms": round(seconds * 1000, 2),
                    **scope.get("state", {}).get("log", {}),
                }
                access_logger.info(json.dumps(line, ensure_ascii=False))
