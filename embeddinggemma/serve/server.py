"""The server process around the app: the listening socket (bound before the model loads, so a taken port
fails at once), the batcher sized for the platform, uvicorn with bounded connections (`serve.connections`),
the warm-up watch, and SIGTERM, which stops accepting connections, finishes the requests in flight, closes
the connections that are left a `shutdown_timeout` later and returns normally.

Needs the `serve` extra (FastAPI, uvicorn, prometheus-client); they are imported only when serving.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embeddinggemma.encode.encoder import EmbeddingGemma

if TYPE_CHECKING:
    from embeddinggemma.serve.batcher import Batcher

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'embeddinggemma-jax[serve]'"


class WarmUpFailed(RuntimeError):
    """Compiling the batch shapes failed (e.g. a batch too large for the device); the server stopped."""


def require_extra() -> None:
    """The serve extra's packages, or an ImportError that says how to install them."""
    for name in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(name)
        except ImportError as e:  # the cause too: an installed fastapi can fail on a dependency of its own
            raise ImportError(f"serving needs {name} ({e}): {INSTALL_HINT}") from None


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Where to listen, how to batch, and what one request may ask for (`embeddinggemma serve --help`)."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (logged)
    served_model_name: str | None = None  # default: the checkpoint directory's name
    api_key: str | None = None  # require 'Authorization: Bearer KEY' on the API endpoints
    max_batch_tokens: int | None = None  # rows x length per device batch; default by platform
    max_batch_size: int = 256
    max_queue: int = 4096
    batch_timeout_ms: float = 2.0
    warmup_threads: int = 1  # shapes compiled at a time during the warm-up
    max_input_tokens: int | None = None  # default: the model's max_seq_length
    max_inputs: int = 2048
    max_request_bytes: int = 16 * 2**20
    read_timeout: float = 30.0  # seconds for a request's headers, and again for its body (else 408)
    keep_alive_timeout: float = 5.0  # an idle connection between requests is closed after this
    shutdown_timeout: float = 5.0  # after SIGTERM, connections not waiting for vectors are closed after this
    max_connections: int = 1000  # one more is answered 503 and closed
    inline_request_bytes: int = 64 * 2**10  # larger bodies are parsed and tokenized off the event loop

    def __post_init__(self) -> None:
        if self.batch_timeout_ms < 0 or not math.isfinite(self.batch_timeout_ms):
            raise ValueError(f"batch_timeout_ms must be >= 0, got {self.batch_timeout_ms}")
        for name in ("read_timeout", "keep_alive_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


def default_served_name(model: str) -> str:
    """A local checkpoint directory's name, else the Hub id as given."""
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model


def listen(host: str, port: int) -> socket.socket:
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


def make_batcher(model: EmbeddingGemma, config: ServerConfig) -> Batcher:
    """The server's `Batcher` for `model`: batch sizes from `config`, else the platform's defaults."""
    import jax

    from embeddinggemma.serve.batcher import Batcher, platform_batching

    budget, row_step = platform_batching(jax.devices()[0].platform)
    return Batcher(
        model,
        max_batch_tokens=config.max_batch_tokens or budget,
        row_step=row_step,
        max_batch_size=config.max_batch_size,
        max_queue=config.max_queue,
        batch_timeout=config.batch_timeout_ms / 1000,
        max_length=config.max_input_tokens,
        warmup_threads=config.warmup_threads,
    )


def serve(load: Callable[[], EmbeddingGemma], model_id: str, config: ServerConfig) -> None:
    """Listen, load the model (`load()`), warm up (health 503 until done), serve until SIGTERM / Ctrl-C.
    `model_id` names the checkpoint in the logs and gives the default served name."""
    require_extra()
    import jax
    import uvicorn

    from embeddinggemma.serve.api import Limits
    from embeddinggemma.serve.app import ServeOptions, create_app
    from embeddinggemma.serve.connections import BoundedH11Protocol, ConnectionLimits

    sock = listen(config.host, config.port)
    start = time.perf_counter()
    model = load()
    if jax.process_count() > 1:
        raise ValueError("serve runs in one process; start one server per host instead of a multi-host job")
    max_length = model.config.max_seq_length
    if config.max_input_tokens is not None and not 3 <= config.max_input_tokens <= max_length:
        raise ValueError(f"max_input_tokens must be in 3..{max_length} (this model's max_seq_length)")
    platform = jax.devices()[0].platform
    batcher = make_batcher(model, config)
    limits = Limits(config.max_inputs, config.max_request_bytes, config.max_input_tokens)
    name = config.served_model_name or default_served_name(model_id)
    options = ServeOptions(name, limits, config.api_key, config.read_timeout, config.inline_request_bytes)
    app = create_app(model, batcher, options)
    host, port = sock.getsockname()[:2]
    logger.info(
        "model %s (%s, %s) loaded in %.1f s; serving it as %r on http://%s:%d",
        model_id,
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
    connection_limits = ConnectionLimits(config.read_timeout, config.shutdown_timeout, config.max_connections)
    uvicorn_config = uvicorn.Config(
        app,
        http=functools.partial(BoundedH11Protocol, limits=connection_limits),
        timeout_keep_alive=config.keep_alive_timeout,  # type: ignore[arg-type]  # a float works (call_later)
        timeout_graceful_shutdown=None,  # the connections bound it (shutdown_timeout)
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(uvicorn_config)
    threading.Thread(target=_watch_warm_up, args=(batcher, server, start), daemon=True).start()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler it found at
    # start; this one makes that a no-op, so a SIGTERM ends the call normally.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if batcher.error is not None:
        raise WarmUpFailed(f"warm-up failed: {batcher.error}") from batcher.error


def _watch_warm_up(batcher: Any, server: Any, start: float) -> None:
    """Log the start-up time once the server is ready; stop it if the warm-up failed (e.g. a batch too large
    for the device)."""
    while batcher.state in ("new", "warming"):
        time.sleep(0.05)
    if batcher.state == "ready":
        logger.info("serving: %.1f s since start", time.perf_counter() - start)
    elif batcher.state == "failed":
        server.should_exit = True
