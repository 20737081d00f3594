"""The app factory: one Starlette app per gateway process."""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import admin, deliveries, health, media, telephony
from gateway.api.context import GatewayContext
from gateway.api.problems import problem
from gateway.config import GatewayConfig, with_dev_secrets
from gateway.events.fanout import EventFanout, Route
from gateway.store import Store, open_store_for
from gateway.webhooks.worker import DeliveryWorker, WorkerSettings

log = logging.getLogger("gateway")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, exc.detail, headers=getattr(exc, "headers", None))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal error; the gateway logged the details")


def create_app(config: GatewayConfig, *, store: Store | None = None) -> Starlette:
    """Build the app; the store opens (and migrates) when the app starts."""
    config = with_dev_secrets(config)
    store = store or open_store_for(config.store)
    worker = DeliveryWorker(
        store, config.webhooks, config.secret_values(),
        settings=WorkerSettings(
            concurrency=config.delivery.concurrency, lease_seconds=config.delivery.lease_seconds,
            poll_seconds=config.delivery.poll_seconds, disable_after_failures=config.delivery.disable_after_failures,
            disable_after_seconds=config.delivery.disable_after_seconds,
        ),
    )
    store.set_fanout(
        EventFanout(Route(s.name, tuple(s.events), s.ordered) for s in config.webhooks if s.enabled),
        worker.wake,
    )
    ctx = GatewayContext(config=config, store=store, worker=worker)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        await worker.start()
        log.info("gateway ready: store=%s agent=%s providers=%s webhooks=%d", config.store, config.agent.url,
                 ",".join(name for name in ("twilio", "vonage") if getattr(config.providers, name)) or "none",
                 len(config.webhooks))
        try:
            yield
        finally:
            await worker.stop()
            await store.close()

    app = Starlette(
        routes=[*health.routes, *telephony.routes, *media.routes, *admin.routes, *deliveries.routes],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.gateway = ctx
    return app
