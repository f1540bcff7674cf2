"""The FastAPI application: OpenAI's /v1/embeddings and text-embeddings-inference's /embed over one batcher.

Endpoints: POST /v1/embeddings (OpenAI), POST /embed (TEI), GET /v1/models, GET /info, GET /health (200 once
every batch shape is compiled), GET /metrics (Prometheus). A request is checked and tokenized by
`serve.api`, its texts are batched with other requests' by `serve.batcher`, and it is answered with the
vectors `EmbeddingGemma.encode` gives. Every client mistake is a 4xx with an OpenAI-style body
{"error": {"message", "type", "param", "code"}}, on both APIs. The handlers are module functions over one
`Server` (the app's state): the model, the batcher, the options and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.serve.api import ApiError, EmbedJob, Limits, finish, openai_response, prepare, read_json, show
from embeddinggemma.serve.batcher import Batcher, NotAccepting, QueueFull
from embeddinggemma.serve.metrics import AccessLog, Metrics

logger = logging.getLogger(__name__)

INLINE_ITEMS = 32  # requests up to this many inputs are tokenized and rendered on the event loop


@dataclass(frozen=True)
class ServeOptions:
    served_model_name: str
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None


@dataclass(frozen=True)
class Server:
    """What every handler works with (`request.app.state.server`)."""

    model: EmbeddingGemma
    batcher: Batcher
    options: ServeOptions
    metrics: Metrics
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(
    model: EmbeddingGemma, batcher: Batcher, options: ServeOptions, metrics: Metrics | None = None
) -> FastAPI:
    """The FastAPI application (starts the batcher on startup, drains it on shutdown)."""
    metrics = metrics or Metrics(batcher)
    if batcher.on_batch is None:
        batcher.on_batch = metrics.batch
    app = FastAPI(title="embeddinggemma-jax", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = Server(model, batcher, options, metrics)
    app.add_middleware(AccessLog, metrics=metrics)
    app.add_exception_handler(HTTPException, _http_error)
    # Starlette routes: the handlers read the raw request (no FastAPI parameter injection).
    app.add_route("/v1/embeddings", openai_embeddings, methods=["POST"])
    app.add_route("/embed", tei_embed, methods=["POST"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/info", info, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/metrics", prometheus, methods=["GET"])
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    batcher = app.state.server.batcher
    batcher.start()
    yield
    await asyncio.to_thread(batcher.close)
    logger.info("stopped: the queue is empty and no batch is in flight")


def _server(request: Request) -> Server:
    return request.app.state.server


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:  # unknown path, wrong method
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return _error_response(ApiError(exc.status_code, message, code=code, headers=dict(exc.headers or {})))


def _endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """ApiError -> its response; anything else -> a logged 500 with the same body shape."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            return _error_response(e)
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
        raise ApiError(499, "the client closed the connection", code="client_closed")
    return pending.future.result()


async def _off_loop(size: int, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """fn(*args) in a worker thread for a big request (tokenizing or rendering thousands of texts would stall
    every other request), inline for a small one (a thread hop costs more than the work)."""
    if size > INLINE_ITEMS:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


async def _run_job(request: Request, body: dict, api: str) -> tuple[np.ndarray, EmbedJob]:
    server = _server(request)
    inputs = body.get("input" if api == "openai" else "inputs")
    size = len(inputs) if isinstance(inputs, list) else 1
    job = await _off_loop(size, prepare, server.model, body, server.options.limits, api=api)
    return finish(await _embed(request, job), job), job


@_endpoint
async def openai_embeddings(request: Request) -> Response:
    _authorize(request)
    options = _server(request).options
    body = await read_json(request, options.limits.max_request_bytes)
    name = body.get("model")
    if name is not None and name != options.served_model_name:
        raise ApiError(
            404,
            f"The model '{show(name).strip(chr(34))}' does not exist; this server serves '{options.served_model_name}'",
            param="model",
            code="model_not_found",
        )
    emb, job = await _run_job(request, body, "openai")
    content = await _off_loop(len(emb), openai_response, emb, job, options.served_model_name)
    return Response(content, media_type="application/json")


@_endpoint
async def tei_embed(request: Request) -> Response:
    _authorize(request)
    body = await read_json(request, _server(request).options.limits.max_request_bytes)
    emb, _ = await _run_job(request, body, "tei")
    content = await _off_loop(len(emb), lambda: json.dumps(emb.tolist()).encode())
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
