"""The app factory: one Starlette app per gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api import admin, deliveries, health, media, openapi, recordings, telephony
from gateway.api import calls as calls_api
from gateway.api import campaigns as campaigns_api
from gateway.api import tunnel as tunnel_api
from gateway.api.context import GatewayContext
from gateway.api.middleware import EdgeMiddleware, body_cut_short
from gateway.api.problems import problem
from gateway.config import ConfigError, GatewayConfig
from gateway.console import routes as console_routes
from gateway.dev_secrets import with_dev_secrets
from gateway.dial.setup import DialSetupError, build_dial_services
from gateway.dial.urls import log_console_urls
from gateway.errors import ProblemError
from gateway.events.fanout import fanout_for
from gateway.media.recording import RECORDINGS_DIR, sweep_recordings
from gateway.media.writes import FLUSH_SECONDS
from gateway.media.writes import flush_all as flush_media_writes
from gateway.redact import redact_url
from gateway.store import Store, open_store_for
from gateway.tunnel import detector_for
from gateway.webhooks.processes import DeliveryProcesses
from gateway.webhooks.worker import DeliveryWorker, WorkerSettings

log = logging.getLogger("gateway")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, exc.detail, headers=getattr(exc, "headers", None))


async def _problem_error(request: Request, exc: Exception) -> Response:
    """A `ProblemError` a route let through (a bad body, a campaign that cannot move...): its
    own status and detail."""
    assert isinstance(exc, ProblemError)
    return problem(exc.status, exc.detail)


async def _body_cut_short(request: Request, exc: Exception) -> Response:
    return problem(body_cut_short(request.scope), "the request body ended before its declared length")


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal error; the gateway logged the details")


class GatewayApp(Starlette):
    """The gateway's Starlette app, with `edge` (one log line per request, the provider rate
    limit, the status-callback route taken directly) in front of its whole stack."""

    edge: EdgeMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        if self.edge is None:
            await self.routed(scope, receive, send)
        else:
            await self.edge(scope, receive, send)

    async def routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's own handling: its middleware, router and routes."""
        await Starlette.__call__(self, scope, receive, send)


def create_app(config: GatewayConfig, *, store: Store | None = None) -> Starlette:
    """Build the app; the store opens (and migrates) when the app starts."""
    config = with_dev_secrets(config)
    store = store or open_store_for(config.store)
    worker = DeliveryWorker(
        store, config.webhooks, config.secret_values(), settings=WorkerSettings.from_config(config.delivery)
    )
    # With delivery processes, they make the configured webhooks' attempts; this process's worker
    # still leases and records every delivery, and makes the campaigns' inline webhooks' itself.
    processes = DeliveryProcesses(config, config.delivery.processes) if config.delivery.processes else None
    if processes is not None:
        worker.send_through(processes.attempt_or_here(worker.attempts.make), processes.subscriptions)
    store.set_fanout(fanout_for(config.webhooks), worker.wake)
    store.set_dispatch(worker.direct_dispatch())
    ctx = GatewayContext(config=config, store=store, worker=worker, delivery_processes=processes)
    store.set_control_handler(ctx.sessions.handle_control)
    if config.public_url == "auto":
        ctx.tunnel = detector_for(config.tunnel)
    try:
        dial = build_dial_services(
            config,
            store,
            worker,
            secret_key=ctx.secret_key,
            origin=lambda: _provider_origin(ctx),
            draining=lambda: ctx.draining,
        )
    except DialSetupError as exc:
        raise ConfigError(str(exc)) from None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        if processes is not None:
            await processes.start()
        await worker.start()
        if ctx.tunnel is not None:
            await ctx.tunnel.start()
        await dial.start()
        sweeper = asyncio.create_task(
            sweep_recordings(Path(config.data_dir) / RECORDINGS_DIR), name="recording-sweeper"
        )
        log.info(
            "gateway ready: store=%s agent=%s providers=%s webhooks=%d",
            redact_url(config.store),
            redact_url(config.agent.url),
            ",".join(name for name in type(config.providers).model_fields if getattr(config.providers, name)) or "none",
            len(config.webhooks),
        )
        if config.public_url and config.public_url != "auto":
            log_console_urls(log, config.public_url)
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await dial.stop()
            if ctx.tunnel is not None:
                await ctx.tunnel.stop()
            await flush_media_writes(FLUSH_SECONDS)  # what media sessions left queued, before the store goes
            await worker.stop()  # its attempts in the delivery processes finish first
            if processes is not None:
                await processes.stop()
            await store.close()

    app = GatewayApp(
        routes=[
            *health.routes,
            *telephony.routes,
            *media.routes,
            *calls_api.routes,
            *campaigns_api.routes,
            *admin.routes,
            *deliveries.routes,
            *recordings.routes,
            *tunnel_api.routes,
            *openapi.routes,
            *console_routes,
        ],
        lifespan=lifespan,
        exception_handlers={
            HTTPException: _http_error,
            ProblemError: _problem_error,
            ClientDisconnect: _body_cut_short,
            Exception: _server_error,
        },
    )
    app.edge = EdgeMiddleware(
        app.routed,
        rate=config.limits.provider_requests_per_second,
        burst=config.limits.provider_burst,
        trusted=ctx.trusted_peers,
        direct=telephony.direct_route,
    )
    app.state.gateway = ctx
    app.state.dial = dial
    return app


def _provider_origin(ctx: GatewayContext) -> str | None:
    """The public origin for URLs handed to providers outside a request (campaign dials)."""
    public_url = ctx.config.public_url
    if public_url and public_url != "auto":
        return public_url
    return ctx.tunnel.origin() if ctx.tunnel is not None else None
