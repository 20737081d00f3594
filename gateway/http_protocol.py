"""uvicorn's HTTP/1.1 protocol (httptools) with a request read deadline.

uvicorn times out an idle keep-alive connection, but not one that is sending: a client that
trickles its headers or body a byte every few seconds (or opens a connection and sends
nothing) held it open indefinitely. Here a request's headers and body must all arrive within
`read_timeout` seconds of its first byte (a new connection's first request: of the connection);
otherwise the client is answered 408 (when no answer has begun) and the connection closed.
The deadline is a timer per request, armed by the parser's message-begin and cancelled by its
message-complete, so it costs nothing per byte. After a WebSocket upgrade it no longer applies
(media sockets have their own token deadline).

With a `media_edge` (`gateway.media.ws_edge.MediaEdge`), a WebSocket upgrade on a provider's
media path is served by the lean WebSocket layer; every other upgrade by uvicorn's own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.metrics import REFUSALS

log = logging.getLogger("gateway.http")

_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 34\r\n"
    b"connection: close\r\n\r\nthe request did not arrive in time"
)


class DeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose requests must be read within `read_timeout` seconds."""

    read_timeout: float = 15.0
    media_edge: Any = None  # a MediaEdge, or None: every WebSocket on uvicorn's implementation

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._headers_read = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_read = False
        if self._read_deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._headers_read = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        if self.media_edge is not None and self.media_edge.upgrade(self):
            return
        super().handle_websocket_upgrade()

    def _arm(self) -> None:
        self._read_deadline = self.loop.call_later(self.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        part = "body" if self._headers_read else "headers"
        REFUSALS.labels("request_read_timeout").inc()
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning(
            "closed the connection from %s: the request's %s did not arrive within %g s", peer, part, self.read_timeout
        )
        if not self._headers_read or not self.cycle.response_started:
            self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()  # a route waiting for the body sees the client gone (http.disconnect)


def http_protocol(read_timeout: float, media_edge: Any = None) -> type[DeadlineProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with this deadline (and media edge)."""
    return type("DeadlineProtocol", (DeadlineProtocol,), {"read_timeout": read_timeout, "media_edge": media_edge})
