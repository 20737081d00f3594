"""Liveness and readiness."""

from __future__ import annotations

from datetime import UTC

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.store.base import StoreError


async def healthz(request: Request) -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """The store answers and the gateway is not draining; a load balancer may send traffic."""
    if request.app.state.gateway.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    try:
        await request.app.state.gateway.store.ping()
    except StoreError as exc:
        return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the gateway's metrics (outbox gauges refreshed here)."""
    from datetime import datetime

    from prometheus_client import CONTENT_TYPE_LATEST

    from gateway.metrics import OUTBOX_OLDEST, OUTBOX_PENDING, exposition

    try:
        stats = await request.app.state.gateway.store.outbox_stats(now=datetime.now(UTC))
        OUTBOX_PENDING.set(stats["pending"])
        OUTBOX_OLDEST.set(stats["oldest_pending_seconds"])
    except StoreError:
        pass
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
