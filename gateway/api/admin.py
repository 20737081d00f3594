"""The admin API (bearer `api_key`): calls and their timelines (with freshly signed media links)."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.context import GatewayContext
from gateway.api.problems import problem
from gateway.api.query import int_param
from gateway.api.recordings import with_fresh_links
from gateway.calls.states import CallState
from gateway.store.base import StoreError

_STATES = [state.value for state in CallState]


def authorized(request: Request) -> Response | None:
    """None when the request carries the admin bearer token, else the 401 to send."""
    ctx: GatewayContext = request.app.state.gateway
    expected = ctx.config.api_key.get_secret_value() if ctx.config.api_key else ""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if expected and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode()):
        return None
    detail = "missing bearer token" if not header else "bearer token is not valid"
    return problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="gateway"'})


async def list_calls(request: Request) -> Response:
    """`GET /api/v1/calls?state=&limit=&cursor=`: newest first, keyset pagination."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx: GatewayContext = request.app.state.gateway
    state = request.query_params.get("state") or None
    if state is not None and state not in _STATES:
        return problem(400, f"state must be one of {', '.join(_STATES)}")
    limit = int_param(request.query_params.get("limit", "50"), low=1, high=500)
    if limit is None:
        return problem(400, "limit must be an integer from 1 to 500")
    try:
        calls, cursor = await ctx.store.list_calls(
            state=state, limit=limit, cursor=request.query_params.get("cursor") or None
        )
    except StoreError as exc:
        return problem(400, str(exc))
    now = ctx.clock()
    return JSONResponse(
        {"calls": [with_fresh_links(call.to_dict(), ctx.secret_key, now=now) for call in calls], "next_cursor": cursor}
    )


async def get_call(request: Request) -> Response:
    """`GET /api/v1/calls/{workflow_run_id}`: the record with its whole timeline."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx: GatewayContext = request.app.state.gateway
    run_id = request.path_params["workflow_run_id"]
    record = await ctx.store.get_call(run_id)
    if record is None:
        return problem(404, f"no call with workflow_run_id {run_id[:128]!r}")
    body = with_fresh_links(record.to_dict(), ctx.secret_key, now=ctx.clock())
    body["timeline"] = [entry.to_dict() for entry in await ctx.store.get_timeline(run_id)]
    return JSONResponse(body)


async def list_call_events(request: Request) -> Response:
    """`GET /api/v1/calls/{workflow_run_id}/events?after=&limit=`: the call's events in order
    (envelopes as delivered, with their store `seq`); `next_after` pages on, null at the end."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx: GatewayContext = request.app.state.gateway
    run_id = request.path_params["workflow_run_id"]
    raw_limit, after = request.query_params.get("limit", "100"), request.query_params.get("after", "0")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 500:
        return problem(400, "limit must be an integer from 1 to 500")
    if not after.isdigit() or len(after) > 18:
        return problem(400, "after must be an event seq (a non-negative integer)")
    if await ctx.store.get_call(run_id) is None:
        return problem(404, f"no call with workflow_run_id {run_id[:128]!r}")
    events = await ctx.store.list_events(after_seq=int(after), limit=int(raw_limit), run_id=run_id)
    more = len(events) == int(raw_limit)
    return JSONResponse(
        {
            "events": [{**event.envelope(), "seq": event.seq} for event in events],
            "next_after": events[-1].seq if more else None,
        }
    )


routes = [
    Route("/api/v1/calls", list_calls, methods=["GET"]),
    Route("/api/v1/calls/{workflow_run_id}", get_call, methods=["GET"]),
    Route("/api/v1/calls/{workflow_run_id}/events", list_call_events, methods=["GET"]),
]


async def clear_call(request: Request) -> Response:
    """`POST /api/v1/calls/{workflow_run_id}/clear`: barge-in from outside the agent; it reaches
    the instance that owns the call's media (`media.instance` in the record)."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx: GatewayContext = request.app.state.gateway
    run_id = request.path_params["workflow_run_id"]
    record = await ctx.store.get_call(run_id)
    if record is None:
        return problem(404, f"no call with workflow_run_id {run_id[:128]!r}")
    if not record.media.get("started") or record.media.get("ended"):
        return problem(409, "the call has no live media session")
    await ctx.store.publish_control(run_id, "clear")
    return JSONResponse(
        {"workflow_run_id": run_id, "requested": "clear", "instance": record.media.get("instance")}, status_code=202
    )


routes.append(Route("/api/v1/calls/{workflow_run_id}/clear", clear_call, methods=["POST"]))
