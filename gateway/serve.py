"""Running the app under uvicorn with a graceful drain.

First SIGTERM (or SIGINT): readiness turns false and new calls are refused, live media
sessions may finish for up to `shutdown.drain_seconds`, then the server stops: delivery
leases are released in the app's shutdown and the process exits 0. A second signal ends
whatever is left at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn

from gateway.heap import settle_heap
from gateway.http_protocol import http_protocol
from gateway.metrics import MEDIA

log = logging.getLogger("gateway")


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
        if self._draining or self._loop is None:
            log.warning("second %s: ending %d live media sessions now", signal.Signals(sig).name, MEDIA.active)
            self.should_exit = True
            self.force_exit = True
            return
        self._draining = True
        self.gateway.draining = True
        log.info("%s: draining (readiness false, new calls refused); %d live media sessions may run up to %.0f s",
                 signal.Signals(sig).name, MEDIA.active, self.drain_seconds)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_seconds
        while MEDIA.active and time.monotonic() < deadline and not self.should_exit:
            await asyncio.sleep(0.2)
        if MEDIA.active:
            log.warning("drain timeout: ending %d live media sessions", MEDIA.active)
        self.should_exit = True


def run(app: Any, *, host: str, port: int, drain_seconds: float, read_timeout: float) -> None:
    """Serve `app` until drained, each request read within `read_timeout` seconds; uvloop when installed."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, proxy_headers=False, server_header=False,
                            ws_max_size=1 << 20, lifespan="on", timeout_graceful_shutdown=5, http=http_protocol(read_timeout))
    DrainingServer(config, gateway=app.state.gateway, drain_seconds=drain_seconds).run()
