"""`GET /api/v1/tunnel` (admin): the public origin providers are given, and the tunnel behind it.

`?refresh=true` looks for the tunnel again before answering.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.admin import authorized
from gateway.api.context import GatewayContext
from gateway.api.problems import problem
from gateway.api.urls import gateway_origin
from gateway.tunnel import describe

_YES, _NO = ("1", "true", "yes"), ("", "0", "false", "no")


async def tunnel_status(request: Request) -> Response:
    """What `public_url` resolves to now: fixed, a detected tunnel, or each request's own host."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx: GatewayContext = request.app.state.gateway
    refresh = request.query_params.get("refresh", "").lower()
    if refresh not in _YES + _NO:
        return problem(400, "refresh must be true or false")
    if refresh in _YES and ctx.tunnel is not None:
        await ctx.tunnel.refresh()
    status = ctx.tunnel.status if ctx.tunnel is not None else None
    searched = ctx.tunnel.searched() if ctx.tunnel is not None else []
    return JSONResponse(describe(ctx.config.public_url, status, gateway_origin(request, ctx), searched))


routes = [Route("/api/v1/tunnel", tunnel_status, methods=["GET"])]
