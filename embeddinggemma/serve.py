"""`embeddinggemma serve`: an embedding server with the OpenAI and text-embeddings-inference (TEI) APIs.

    embeddinggemma serve --model DIR [--host 127.0.0.1] [--port 8080] [--dtype bfloat16] [--mesh data=8]

Endpoints: POST /v1/embeddings (OpenAI), POST /embed (TEI), GET /v1/models, GET /info, GET /health (200 once
every batch shape is compiled), GET /metrics (Prometheus). Requests are tokenized here, their texts batched
with other requests' by `embeddinggemma.batcher`, and answered with the vectors `EmbeddingGemma.encode` gives.
Every client mistake is a 4xx with an OpenAI-style body {"error": {"message", "type", "param", "code"}}, on
both APIs. SIGTERM stops accepting connections, finishes the requests in flight and exits with status 0.
Needs the `serve` extra (FastAPI, uvicorn, prometheus-client); this module imports them only when used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import functools
import hmac
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embeddinggemma import vectors
from embeddinggemma.batcher import Batcher, BatchReport, NotAccepting, QueueFull
from embeddinggemma.encoder import EmbeddingGemma
from embeddinggemma.tokenizer import text_error

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("embeddinggemma.access")

INSTALL_HINT = "pip install 'embeddinggemma-jax[serve]'"
ENDPOINTS = ("/v1/embeddings", "/embed", "/v1/models", "/info", "/health", "/metrics")
QUIET_WHEN_OK = ("/health", "/metrics")  # polled: not access-logged when they answer 200
OPENAI_FIELDS = {"input", "model", "dimensions", "encoding_format", "user", "prompt_name", "prompt", "truncate"}
TEI_FIELDS = {"inputs", "normalize", "truncate", "truncation_direction", "prompt_name", "prompt", "dimensions"}
INLINE_ITEMS = 32  # requests up to this many inputs are tokenized and rendered on the event loop
ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error", 503: "service_unavailable"}


def require_extra() -> None:
    """The serve extra's packages, or an ImportError that says how to install them."""
    for name in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(name)
        except ImportError as e:  # the cause too: an installed fastapi can fail on a dependency of its own
            raise ImportError(f"serving needs {name} ({e}): {INSTALL_HINT}") from None


# ---------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI-style error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _invalid(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ---------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_inputs: int = 2048  # texts (or token sequences) per request, as OpenAI's API
    max_request_bytes: int = 16 * 2**20
    max_input_tokens: int | None = None  # default: the model's max_seq_length


@dataclass(frozen=True)
class EmbedJob:
    """A validated request: framed token ids, and what to do with the vectors."""

    ids: list[list[int]]
    dim: int
    normalize: bool
    encoding: str  # "float" | "base64"

    @property
    def tokens(self) -> int:
        return sum(map(len, self.ids))


def _optional(body: dict, name: str, kind: type | tuple[type, ...], default: Any, what: str) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _invalid(f"'{name}' must be {what}, got {_show(value)}", name, "invalid_type")
    return value


def _is_token(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_inputs(value: Any, param: str, limits: Limits, vocab_size: int) -> tuple[str, list, bool]:
    """("text", [str, ...]) or ("tokens", [[int, ...], ...]) from a string, a list of strings, a list of token
    ids or a list of lists of token ids, and whether errors name items by index; a 400 naming the first bad
    item otherwise."""
    if value is None:
        raise _invalid(f"'{param}' is required", param, "missing_field")
    if isinstance(value, str):
        kind, items = "text", [value]
    elif isinstance(value, list):
        if not value:
            raise _invalid(f"'{param}' must not be empty", param)
        if all(_is_token(x) for x in value):
            kind, items = "tokens", [value]
        elif isinstance(value[0], list):
            kind, items = "tokens", value
        else:
            kind, items = "text", value
    else:
        raise _invalid(
            f"'{param}' must be a string, a list of strings, or token ids, got {_show(value)}", param, "invalid_type"
        )
    if len(items) > limits.max_inputs:
        raise _invalid(
            f"'{param}' has {len(items)} items; at most {limits.max_inputs} are allowed per request",
            param,
            "too_many_inputs",
        )
    indexed = items is value
    for i, item in enumerate(items):
        where = f"{param}[{i}]" if indexed else param
        if item is None:
            raise _invalid(f"'{where}' is null", param)
        if kind == "text":
            if not isinstance(item, str):
                raise _invalid(
                    f"'{where}' must be a string (or every item a token id), got {_show(item)}", param, "invalid_type"
                )
            if not item:
                raise _invalid(f"'{where}' is an empty string", param)
            if problem := text_error(item):
                raise _invalid(f"'{where}': {problem}", param)
        else:
            if not isinstance(item, list) or not all(_is_token(x) for x in item):
                raise _invalid(f"'{where}' must be a list of token ids, got {_show(item)}", param, "invalid_type")
            if not item:
                raise _invalid(f"'{where}' is an empty list of token ids", param)
            bad = next((x for x in item if not 0 <= x < vocab_size), None)
            if bad is not None:
                raise _invalid(f"'{where}' holds token id {bad}, outside 0..{vocab_size - 1}", param)
    return kind, items, indexed


def prepare(
    model: EmbeddingGemma,
    body: dict,
    limits: Limits,
    *,
    api: str,
) -> EmbedJob:
    """Validate an OpenAI ("openai") or TEI ("tei") request body and tokenize it."""
    fields, param = (OPENAI_FIELDS, "input") if api == "openai" else (TEI_FIELDS, "inputs")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise _invalid(f"unrecognized field '{unknown[0]}'; accepted: {', '.join(sorted(fields))}", unknown[0])
    kind, items, indexed = parse_inputs(body.get(param), param, limits, model.config.vocab_size)
    # OpenAI's API truncates over-long input; TEI's refuses it unless asked to truncate.
    truncate = _optional(body, "truncate", bool, api == "openai", "true or false")
    normalize = _optional(body, "normalize", bool, True, "true or false")
    encoding = _optional(body, "encoding_format", str, "float", '"float" or "base64"')
    if encoding not in ("float", "base64"):
        raise _invalid(f'\'encoding_format\' must be "float" or "base64", got {_show(encoding)}', "encoding_format")
    direction = _optional(body, "truncation_direction", str, "right", '"right"')
    if direction.lower() != "right":
        raise _invalid("only 'truncation_direction' \"right\" is supported", "truncation_direction")
    _optional(body, "user", str, None, "a string")
    dimensions = body.get("dimensions")
    try:
        dim = model.check_dim(dimensions)
    except (TypeError, ValueError) as e:
        raise _invalid(str(e).replace("truncate_dim", "'dimensions'"), "dimensions") from None
    prompt_name, prompt = body.get("prompt_name"), body.get("prompt")
    try:
        prefix = model.prompt_prefix(prompt_name, prompt)
    except (TypeError, ValueError) as e:
        raise _invalid(str(e), "prompt" if prompt is not None else "prompt_name") from None
    max_length = min(limits.max_input_tokens or model.config.max_seq_length, model.config.max_seq_length)
    tok = model.tokenizer
    head = tok.pieces([prefix])[0] if prefix else []
    if len(head) >= max_length - 2:
        raise _invalid(
            f"the prompt is {len(head)} tokens: with <bos> and <eos> it leaves no room for the text in this "
            f"server's {max_length} tokens",
            "prompt" if prompt is not None else "prompt_name",
        )
    pieces = tok.pieces([prefix + t for t in items]) if kind == "text" else [head + list(x) for x in items]
    ids, cut = tok.frame(pieces, max_length)
    if not truncate and any(cut):
        i = cut.index(True)
        where = f"{param}[{i}]" if indexed else param
        raise ApiError(
            413,
            f"'{where}' is {len(pieces[i]) + 2} tokens (with <bos>, <eos> and the prompt), over this server's "
            f'limit of {max_length}; shorten it or send "truncate": true',
            param=param,
            code="context_length_exceeded",
        )
    return EmbedJob(ids, dim, normalize, encoding)


def finish(emb: np.ndarray, job: EmbedJob) -> np.ndarray:
    """The requested width (Matryoshka truncation, re-normalized unless normalize is false)."""
    if job.dim < emb.shape[1]:
        emb = vectors.l2_normalize(emb[:, : job.dim]) if job.normalize else emb[:, : job.dim]
    return emb


def openai_response(emb: np.ndarray, job: EmbedJob, model_name: str) -> bytes:
    if job.encoding == "base64":
        encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in emb]
    else:
        encoded = emb.tolist()
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    usage = {"prompt_tokens": job.tokens, "total_tokens": job.tokens}
    return json.dumps({"object": "list", "data": data, "model": model_name, "usage": usage}).encode()


# ---------------------------------------------------------------------------------------------- metrics


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


# ---------------------------------------------------------------------------------------------- the app


@dataclass(frozen=True)
class ServeOptions:
    served_model_name: str
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None


async def read_json(request: Any, limit: int) -> dict:
    """The request body as a JSON object; 413 over `limit` bytes (before reading it when Content-Length says so)."""
    too_large = ApiError(
        413, f"the request body is over this server's limit of {limit} bytes", code="request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as e:
        message = "the request body is empty" if not raw.strip() else f"the request body is not valid JSON: {e}"
        raise ApiError(400, message, code="invalid_json") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of over 4300 digits, nesting too deep
        raise ApiError(400, f"the request body is not usable JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_show(body)}", code="invalid_json")
    return body


def create_app(model: EmbeddingGemma, batcher: Batcher, options: ServeOptions, metrics: Metrics | None = None):
    """The FastAPI application (starts the batcher on startup, drains it on shutdown)."""
    require_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException

    metrics = metrics or Metrics(batcher)
    if batcher.on_batch is None:
        batcher.on_batch = metrics.batch
    limits = options.limits
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close)
        logger.info("stopped: the queue is empty and no batch is in flight")

    app = FastAPI(title="embeddinggemma-jax", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessLog, metrics=metrics)

    def error_response(error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # unknown path, wrong method
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(ApiError(exc.status_code, message, code=code, headers=dict(exc.headers or {})))

    def endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """ApiError -> its response; anything else -> a logged 500 with the same body shape."""

        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                return error_response(e)
            except Exception:
                logger.exception("%s %s failed", request.method, request.url.path)
                return error_response(ApiError(500, "internal error (logged by the server)", code="internal_error"))

        return wrapped

    def authorize(request: Request) -> None:
        if options.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401,
                "missing API key: send the header 'Authorization: Bearer KEY'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(key.strip().encode(), options.api_key.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def embed(request: Request, job: EmbedJob) -> np.ndarray:
        """The vectors of the job's sequences from the batcher; a client that disconnects first cancels them."""
        log = request.scope.setdefault("state", {}).setdefault("log", {})
        log.update(inputs=len(job.ids), tokens=job.tokens)
        try:
            pending = batcher.submit(job.ids, asyncio.get_running_loop())
        except QueueFull as e:
            raise ApiError(
                429, f"the server is busy: {e}; retry later", code="queue_full", headers={"Retry-After": "1"}
            ) from None
        except NotAccepting as e:
            raise ApiError(503, f"the server is {e}", code="not_ready", headers={"Retry-After": "1"}) from None

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({pending.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pending.future.done():  # the client went away, or this handler was cancelled
                metrics.cancelled.inc(batcher.cancel(pending))
                pending.future.cancel()
        if pending.future.cancelled():
            log["cancelled"] = True
            raise ApiError(499, "the client closed the connection", code="client_closed")
        return pending.future.result()

    async def off_loop(size: int, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """fn(*args) in a worker thread for a big request (tokenizing or rendering thousands of texts would stall
        every other request), inline for a small one (a thread hop costs more than the work)."""
        if size > INLINE_ITEMS:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    async def run_job(request: Request, body: dict, api: str) -> tuple[np.ndarray, EmbedJob]:
        inputs = body.get("input" if api == "openai" else "inputs")
        job = await off_loop(len(inputs) if isinstance(inputs, list) else 1, prepare, model, body, limits, api=api)
        return finish(await embed(request, job), job), job

    @endpoint
    async def openai_embeddings(request: Request) -> Response:
        authorize(request)
        body = await read_json(request, limits.max_request_bytes)
        name = body.get("model")
        if name is not None and name != options.served_model_name:
            raise ApiError(
                404,
                f"The model '{_show(name).strip(chr(34))}' does not exist; this server serves "
                f"'{options.served_model_name}'",
                param="model",
                code="model_not_found",
            )
        emb, job = await run_job(request, body, "openai")
        content = await off_loop(len(emb), openai_response, emb, job, options.served_model_name)
        return Response(content, media_type="application/json")

    @endpoint
    async def tei_embed(request: Request) -> Response:
        authorize(request)
        emb, _ = await run_job(request, await read_json(request, limits.max_request_bytes), "tei")
        content = await off_loop(len(emb), lambda: json.dumps(emb.tolist()).encode())
        return Response(content, media_type="application/json")

    @endpoint
    async def models(request: Request) -> Response:
        authorize(request)
        entry = {"id": options.served_model_name, "object": "model", "created": created, "owned_by": "embeddinggemma"}
        return JSONResponse({"object": "list", "data": [entry]})

    @endpoint
    async def info(request: Request) -> Response:
        authorize(request)
        cfg = model.config
        return JSONResponse(
            {
                "model_id": options.served_model_name,
                "model_dtype": model.dtype,
                "model_type": {"embedding": {"pooling": "mean"}},
                "embedding_dim": cfg.embedding_dim,
                "max_input_length": batcher.max_length,
                "max_client_batch_size": limits.max_inputs,
                "max_batch_tokens": max(rows * length for rows, length in batcher.shapes),
                "batch_shapes": batcher.shapes,
                "prompts": model.prompts,
            }
        )

    async def health(request: Request) -> Response:
        if batcher.state == "ready":
            return JSONResponse({"status": "ok"})
        state = {"new": "starting", "warming": "warming up", "failed": "failed"}.get(batcher.state, "shutting down")
        return JSONResponse({"status": state}, status_code=503)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Starlette routes: the handlers read the raw request (no FastAPI parameter injection).
    app.add_route("/v1/embeddings", openai_embeddings, methods=["POST"])
    app.add_route("/embed", tei_embed, methods=["POST"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/info", info, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/metrics", prometheus, methods=["GET"])
    return app


# ---------------------------------------------------------------------------------------------- command


def default_served_name(model: str) -> str:
    """A local checkpoint directory's name, else the Hub id as given."""
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model


def add_arguments(p: argparse.ArgumentParser) -> None:
    from embeddinggemma.cli import positive_int  # cli imports this module; by now it is loaded

    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0: all)")
    g.add_argument("--port", type=_port, default=8080, help="port (default: %(default)s; 0: any free port, logged)")
    g.add_argument("--served-model-name", help="the `model` clients send (default: the checkpoint directory's name)")
    g.add_argument(
        "--api-key",
        default=os.environ.get("EMBEDDINGGEMMA_API_KEY"),
        help="require 'Authorization: Bearer KEY' on the API endpoints (default: $EMBEDDINGGEMMA_API_KEY; "
        "/health and /metrics stay open)",
    )
    g = p.add_argument_group("batching")
    g.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        help="padded tokens per device batch, rows x length (default: 1024 on CPU, 16384 on an accelerator); "
        "each length bucket's largest row count is the largest power of two within it, and smaller batches run "
        "at smaller powers of two (every one on CPU, every 4th on an accelerator)",
    )
    g.add_argument("--max-batch-size", type=positive_int, default=256, help="rows per device batch (default: 256)")
    g.add_argument("--max-queue", type=positive_int, default=4096, help="texts waiting, beyond which requests get 429")
    g.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=2.0,
        help="how long a partial batch waits for more texts while the device is idle (default: 2)",
    )
    g = p.add_argument_group("request limits")
    g.add_argument(
        "--max-input-tokens",
        type=positive_int,
        help="longest input in tokens, with <bos>/<eos> and the prompt (default: the model's max_seq_length); "
        "longer inputs are truncated, or refused with truncate=false; fewer length buckets to compile",
    )
    g.add_argument("--max-inputs", type=positive_int, default=2048, help="inputs per request (default: 2048)")
    g.add_argument(
        "--max-request-bytes", type=positive_int, default=16 * 2**20, help="request body size limit (default: 16 MiB)"
    )


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {n}")
    return n


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_logger.addHandler(handler)
    access_logger.propagate = False


def run(args: argparse.Namespace) -> int:
    """`embeddinggemma serve`: load, listen, warm up (health 503 until done), serve until SIGTERM / Ctrl-C."""
    require_extra()
    import jax
    import uvicorn

    from embeddinggemma.cli import load_model

    if args.batch_timeout_ms < 0 or not math.isfinite(args.batch_timeout_ms):
        raise ValueError(f"--batch-timeout-ms must be >= 0, got {args.batch_timeout_ms}")
    _configure_logging()
    sock = _listen(args.host, args.port)
    start = time.perf_counter()
    model = load_model(args)
    if jax.process_count() > 1:
        raise ValueError("serve runs in one process; start one server per host instead of a multi-host job")
    max_length = model.config.max_seq_length
    if args.max_input_tokens is not None and not 3 <= args.max_input_tokens <= max_length:
        raise ValueError(f"--max-input-tokens must be in 3..{max_length} (this model's max_seq_length)")
    platform = jax.devices()[0].platform
    # on a CPU padding rows cost as much as real ones, so small batches get every power of two; on an
    # accelerator a small batch costs about what a few rows do, and every 4th power keeps the warm-up short
    budget, row_step = (1024, 2) if platform == "cpu" else (16384, 4)
    batcher = Batcher(
        model,
        max_batch_tokens=args.max_batch_tokens or budget,
        row_step=row_step,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        batch_timeout=args.batch_timeout_ms / 1000,
        max_length=args.max_input_tokens,
    )
    limits = Limits(args.max_inputs, args.max_request_bytes, args.max_input_tokens)
    options = ServeOptions(args.served_model_name or default_served_name(args.model), limits, args.api_key)
    app = create_app(model, batcher, options)
    host, port = sock.getsockname()[:2]
    logger.info(
        "model %s (%s, %s) loaded in %.1f s; serving it as %r on http://%s:%d",
        args.model,
        model.dtype,
        platform,
        time.perf_counter() - start,
        options.served_model_name,
        host,
        port,
    )
    logger.info(
        "%d batch shapes (rows x length): %s; /health answers 200 once all are compiled",
        len(batcher.shapes),
        ", ".join(f"{r}x{n}" for r, n in batcher.shapes),
    )
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=None, lifespan="on")
    server = uvicorn.Server(config)
    threading.Thread(target=_watch_warm_up, args=(batcher, server, start), daemon=True).start()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler it found at
    # start; this one makes that a no-op, so a SIGTERM ends with status 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if batcher.error is not None:
        print(f"embeddinggemma serve: error: warm-up failed: {batcher.error}", file=sys.stderr)
        return 1
    return 0


def _watch_warm_up(batcher: Batcher, server: Any, start: float) -> None:
    """Log when the server is ready; stop it if the warm-up failed (e.g. a batch too large for the device)."""
    while batcher.state in ("new", "warming"):
        time.sleep(0.05)
    if batcher.state == "ready":
        logger.info(
            "ready: %d batch shapes warmed up in %.1f s (%.1f s since start)",
            len(batcher.shapes),
            batcher.warmup_seconds,
            time.perf_counter() - start,
        )
    elif batcher.state == "failed":
        server.should_exit = True
