"""The FastAPI application: OpenAI's /v1/embeddings and text-embeddings-inference's /embed over one batcher.

Endpoints: POST /v1/embeddings (OpenAI), POST /embed (TEI), GET /v1/models, GET /info, GET /health (200 once
every batch shape is compiled), GET /metrics (Prometheus), the OpenAPI schema (GET /openapi.json, /docs). A
request is checked and tokenized by `serve.api` (in a worker thread when it is large), its texts are batched
with other requests' by `serve.batcher`, and it is answered with the vectors `EmbeddingGemma.encode` gives.
Every client mistake is a 4xx with an OpenAI-style body {"error": {"message", "type", "param", "code"}}, on
both APIs. The handlers are module functions over one `Server` (the app's state): the model, the batcher, the
options and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.serve import schema
from embeddinggemma.serve.api import (
    ApiError,
    EmbedJob,
    Limits,
    finish,
    openai_response,
    parse_json,
    prepare,
    read_body,
    render,
    show,
    tei_response,
)
from embeddinggemma.serve.batcher import Batcher, NotAccepting, QueueFull
from embeddinggemma.serve.metrics import AccessLog, Metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    served_model_name: str
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    read_timeout: float = 30.0  # seconds for a request body to arrive once its headers have (else 408)
    # Bodies up to this many bytes are parsed and tokenized, and responses up to it rendered, on the event loop
    # (a thread hop costs more than the work); larger ones in a worker thread, so /health and /metrics stay quick.
    inline_bytes: int = 64 * 2**10


@dataclass(frozen=True)
class Server:
    """What every handler works with (`request.app.state.server`)."""

    model: EmbeddingGemma
    batcher: Batcher
    options: ServeOptions
    metrics: Metrics
    created: int = field(default_factory=lambda: int(time.time()))
    # One thread for the large requests' parsing, tokenizing and rendering: JSON parsing holds the GIL for a
    # whole body (~70 ms for 15 MiB), so with one such thread the event loop waits for at most one of those
    # steps at a time. It loses no parallelism: SentencePiece tokenizes a batch on every core by itself.
    worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="embeddinggemma-request")
    )


def create_app(
    model: EmbeddingGemma, batcher: Batcher, options: ServeOptions, metrics: Metrics | None = None
) -> FastAPI:
    """The FastAPI application (starts the batcher on startup, drains it on shutdown)."""
    metrics = metrics or Metrics(batcher)
    if batcher.on_batch is None:
        batcher.on_batch = metrics.batch
    app = FastAPI(
        title="embeddinggemma-jax",
        summary="OpenAI's /v1/embeddings and text-embeddings-inference's /embed for EmbeddingGemma",
        lifespan=_lifespan,
        redoc_url=None,
    )
    app.state.server = Server(model, batcher, options, metrics)
    app.add_middleware(AccessLog, metrics=metrics)
    app.add_exception_handler(HTTPException, _http_error)
    # The handlers read the raw request themselves (FastAPI would answer its own 422 to a body it cannot
    # validate); `schema` describes the bodies and answers for /openapi.json.
    post, docs = ["POST"], schema.documented
    api = (400, 401, 404, 408, 413, 429, 499, 500, 503)
    openai_docs = docs(schema.EmbeddingsResponse, *api, body=schema.EmbeddingsRequest, summary="OpenAI: embed texts")
    tei_docs = docs(list[list[float]], *api, body=schema.EmbedRequest, summary="text-embeddings-inference: embed")
    app.add_api_route("/v1/embeddings", openai_embeddings, methods=post, **openai_docs)
    app.add_api_route("/embed", tei_embed, methods=post, **tei_docs)
    app.add_api_route("/v1/models", models, methods=["GET"], **docs(dict[str, Any], 401, 500))
    app.add_api_route("/info", info, methods=["GET"], **docs(dict[str, Any], 401, 500))
    app.add_api_route("/health", health, methods=["GET"], responses=schema.HEALTH)
    app.add_api_route("/metrics", prometheus, methods=["GET"], response_class=Response, responses=schema.METRICS)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    server = app.state.server
    server.batcher.start()
    yield
    await asyncio.to_thread(server.batcher.close)
    server.worker.shutdown()
    logger.info("stopped: the queue is empty and no batch is in flight")


def _server(request: Request) -> Server:
    return request.app.state.server


def _error_response(error: ApiError) -> Response:
    return Response(render(error.body()), error.status, error.headers, media_type="application/json")


async def _http_error(request: Request, exc: HTTPException) -> Response:  # unknown path, wrong method
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return _error_response(ApiError(exc.status_code, message, code=code, headers=dict(exc.headers or {})))


def _endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """ApiError -> its response; a client gone mid-body -> 499 (its mistake, not the server's: no traceback);
    anything else -> a logged 500 with the same body shape."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            return _error_response(e)
        except ClientDisconnect:
            return _error_response(CLIENT_CLOSED)
        except Exception:
            logger.exception("%s %s failed", request.method, request.url.path)
            return _error_response(ApiError(500, "internal error (logged by the server)", code="internal_error"))

    return wrapped


def _authorize(request: Request) -> None:
    api_key = _server(request).options.api_key
    if api_key is None:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401,
            "missing API key: send the header 'Authorization: Bearer KEY'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(key.strip().encode(), api_key.encode()):
        raise ApiError(401, "incorrect API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def _embed(request: Request, job: EmbedJob) -> np.ndarray:
    """The vectors of the job's sequences from the batcher; a client that disconnects first cancels them."""
    server = _server(request)
    log = request.scope.setdefault("state", {}).setdefault("log", {})
    log.update(inputs=len(job.ids), tokens=job.tokens)
    try:
        pending = server.batcher.submit(job.ids, asyncio.get_running_loop())
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
            server.metrics.cancelled.inc(server.batcher.cancel(pending))
            pending.future.cancel()
    if pending.future.cancelled():
        log["cancelled"] = True
        raise CLIENT_CLOSED
    return pending.future.result()


CLIENT_CLOSED = ApiError(499, "the client closed the connection", code="client_closed")


async def _off_loop(request: Request, size: int, fn: Callable, *args: Any) -> Any:
    """fn(*args) in the server's worker thread when `size` (bytes of the body, or of the vectors) is over the
    options' `inline_bytes` (tokenizing a 15 MiB text on the event loop would stall every other request for
    seconds), inline otherwise (a thread hop costs more than the work)."""
    server = _server(request)
    if size > server.options.inline_bytes:
        return await asyncio.get_running_loop().run_in_executor(server.worker, fn, *args)
    return fn(*args)


def _openai_job(server: Server, raw: bytes) -> EmbedJob:
    body = parse_json(raw)
    name, served = body.get("model"), server.options.served_model_name
    if name is not None and name != served:
        raise ApiError(
            404,
            f"The model {show(name)} does not exist; this server serves {show(served)}",
            param="model",
            code="model_not_found",
        )
    return prepare(server.model, body, server.options.limits, api="openai")


def _tei_job(server: Server, raw: bytes) -> EmbedJob:
    return prepare(server.model, parse_json(raw), server.options.limits, api="tei")


async def _run_job(request: Request, parse: Callable[[Server, bytes], EmbedJob]) -> tuple[np.ndarray, EmbedJob]:
    """The request's vectors at the requested width, and its job: the body read, parsed and tokenized (in a
    worker thread when it is large), then batched."""
    _authorize(request)
    server = _server(request)
    raw = await read_body(request, server.options.limits.max_request_bytes, server.options.read_timeout)
    job = await _off_loop(request, len(raw), parse, server, raw)
    return finish(await _embed(request, job), job), job


@_endpoint
async def openai_embeddings(request: Request) -> Response:
    emb, job = await _run_job(request, _openai_job)
    name = _server(request).options.served_model_name
    content = await _off_loop(request, emb.nbytes, openai_response, emb, job, name)
    return Response(content, media_type="application/json")


@_endpoint
async def tei_embed(request: Request) -> Response:
    emb, _ = await _run_job(request, _tei_job)
    content = await _off_loop(request, emb.nbytes, tei_response, emb)
    return Response(content, media_type="application/json")


@_endpoint
async def models(request: Request) -> Response:
    _authorize(request)
    server = _server(request)
    name = server.options.served_model_name
    entry = {"id": name, "object": "model", "created": server.created, "owned_by": "embeddinggemma"}
    return JSONResponse({"object": "list", "data": [entry]})


@_endpoint
async def info(request: Request) -> Response:
    _authorize(request)
    server = _server(request)
    model, batcher, limits = server.model, server.batcher, server.options.limits
    return JSONResponse(
        {
            "model_id": server.options.served_model_name,
            "model_dtype": model.dtype,
            "model_type": {"embedding": {"pooling": "mean"}},
            "embedding_dim": model.config.embedding_dim,
            "max_input_length": batcher.max_length,
            "max_client_batch_size": limits.max_inputs,
            "max_batch_tokens": max(rows * length for rows, length in batcher.shapes),
            "batch_shapes": batcher.shapes,
            "prompts": model.prompts,
        }
    )


async def health(request: Request) -> Response:
    state = _server(request).batcher.state
    if state == "ready":
        return JSONResponse({"status": "ok"})
    status = {"new": "starting", "warming": "warming up", "failed": "failed"}.get(state, "shutting down")
    return JSONResponse({"status": status}, status_code=503)


async def prometheus(request: Request) -> Response:
    return Response(generate_latest(_server(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
