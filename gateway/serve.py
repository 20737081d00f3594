"""Running the app under uvicorn with a graceful drain.

First SIGTERM (or SIGINT): readiness turns false and new calls are refused (503), while the
calls already live keep everything they need: their media, status callbacks (the provider's
`completed` comes a moment after the audio ends) and answer webhooks. The server stops when
every live call has ended and its media closed, or after `shutdown.drain_seconds`; a call
still live then gets a `shutdown.unfinished` timeline entry and a log line. Delivery leases
are released in the app's shutdown and the process exits 0. A second signal ends whatever is
left at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn

from gateway.heap import settle_heap
from gateway.http_protocol import DeadlineProtocol, http_protocol
from gateway.metrics import MEDIA

log = logging.getLogger("gateway")

SETTLE_SECONDS = 2.0  # how often a drain asks the store which of its live calls have ended


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains before stopping."""

    def __init__(self, config: uvicorn.Config, *, gateway: Any, drain_seconds: float) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.drain_seconds = drain_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        settle_heap()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining and self.should_exit and not self.force_exit:
            # Drained already and stopping in order (a signal sent to the whole process group
            # arrives twice: from the terminal or supervisor, and forwarded by `make`): nothing
            # is left to end, and forcing now would only skip the app's orderly shutdown.
            return
        if self._draining or self._loop is None:
            log.warning("second %s: ending %d live media sessions now", signal.Signals(sig).name, MEDIA.active)
            self.should_exit = True
            self.force_exit = True
            return
        self._draining = True
        self.gateway.draining = True
        log.info(
            "%s: draining (readiness false, new calls refused); %d live calls and %d media sessions may run up to %.0f s",
            signal.Signals(sig).name,
            len(self.gateway.live_calls),
            MEDIA.active,
            self.drain_seconds,
        )
        loop = self._loop
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        live = self.gateway.live_calls
        deadline = time.monotonic() + self.drain_seconds
        settled = 0.0
        while not self.should_exit and time.monotonic() < deadline:
            if time.monotonic() - settled >= SETTLE_SECONDS:  # endings another instance took
                await live.settle(self.gateway.store)
                settled = time.monotonic()
            if not MEDIA.active and not len(live):
                break
            await asyncio.sleep(0.1)
        if self.should_exit:  # a second signal: no waiting, no writing
            return
        if MEDIA.active:
            log.warning("drain timeout: ending %d live media sessions", MEDIA.active)
        if len(live):
            await live.mark_unfinished(self.gateway.store, self.drain_seconds)
        else:
            log.info("drained: every live call has ended")
        self.should_exit = True


def http_protocol_for(app: Any, read_timeout: float, *, lean_media: bool) -> type[DeadlineProtocol]:
    """uvicorn's HTTP protocol class for `app`: the read deadline, and with `lean_media` the
    providers' media sockets on the lean WebSocket layer (`gateway.media.ws_edge`)."""
    edge = None
    if lean_media:
        from gateway.media.ws_edge import MediaEdge

        edge = MediaEdge(app)
    return http_protocol(read_timeout, edge)


def run(
    app: Any,
    *,
    host: str,
    port: int,
    drain_seconds: float,
    read_timeout: float,
    lean_media: bool = True,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve `app` until drained, each request read within `read_timeout` seconds; uvloop when
    installed. `lean_media`: providers' media sockets on the lean WebSocket layer (picows).
    `sockets`: listening sockets already bound (a worker's, from `gateway.workers`)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        ws_max_size=1 << 20,
        lifespan="on",
        timeout_graceful_shutdown=5,
        http=http_protocol_for(app, read_timeout, lean_media=lean_media),
    )
    DrainingServer(config, gateway=app.state.gateway, drain_seconds=drain_seconds).run(sockets=sockets)
