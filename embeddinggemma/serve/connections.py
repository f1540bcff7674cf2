"""The server's HTTP/1.1 connections: uvicorn's h11 protocol with the bounds that uvicorn leaves out, so that
clients the server does not control cannot hold it.

- At most `max_connections` connections: one more is answered 503 and closed at once (uvicorn's own
  concurrency limit answers only once a request's headers have arrived, so stalled connections pile up).
- A request's line and headers must arrive within `read_timeout` of the connection opening, or of the
  request's first byte on a reused connection (uvicorn waits forever): else 408 and the connection closes.
  The body has as long again once the headers are in (`serve.api.read_body`, which answers its own 408).
  Between requests uvicorn's keep-alive timeout closes an idle connection.
- On shutdown uvicorn closes the idle connections and waits for the others; here each gets
  `shutdown_timeout` more seconds, and then is closed, unless its request is still being embedded: that one
  keeps its connection until answered, and is closed `shutdown_timeout` later if the answer is not taken by then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from embeddinggemma.serve.api import ApiError, render


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    read_timeout: float = 30.0
    shutdown_timeout: float = 5.0
    max_connections: int = 1000


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with `ConnectionLimits` (uvicorn makes one per connection)."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._read_timer: asyncio.TimerHandle | None = None
        self._shutdown_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            message = f"the server has {self.limits.max_connections} connections open, its limit; retry later"
            self._refuse(503, message, "too_many_connections")
        else:
            self._read_timer = self.loop.call_later(self.limits.read_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in: the body is the application's to time
            self._cancel(self._read_timer)
            self._read_timer = None
        elif self._read_timer is None:  # the first bytes of a request on a kept-alive connection
            self._read_timer = self.loop.call_later(self.limits.read_timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel(self._read_timer)
        self._cancel(self._shutdown_timer)
        super().connection_lost(exc)

    def shutdown(self) -> None:
        super().shutdown()  # closes the connection if no request is on it
        if not self.transport.is_closing():
            self._shutdown_timer = self.loop.call_later(self.limits.shutdown_timeout, self._shutdown_expired)

    def _headers_late(self) -> None:
        self._read_timer = None
        if self.conn.their_state is h11.IDLE:
            message = f"the request did not arrive within the server's read timeout of {self.limits.read_timeout:g} s"
            self._refuse(408, message, "request_timeout")

    def _shutdown_expired(self) -> None:
        embedding = self.cycle is not None and self.conn.their_state is h11.DONE and not self.cycle.response_started
        if embedding:  # its answer is on the way: look again a shutdown_timeout later
            self._shutdown_timer = self.loop.call_later(self.limits.shutdown_timeout, self._shutdown_expired)
        else:
            self._shutdown_timer = None
            self.transport.abort()

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer `status` with an OpenAI-style error body and close (no request is in progress: uvicorn has
        nothing to answer, so the bytes are written directly)."""
        body = render(ApiError(status, message, code=code).body())
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
