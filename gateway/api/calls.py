"""Placing and ending calls (admin API, bearer `api_key`).

- `POST /api/v1/calls`: create the call record, then dial through the provider's REST API.
- `POST /api/v1/calls/{workflow_run_id}/hangup`: end a live call at the provider.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.admin import authorized
from gateway.api.body import json_body
from gateway.api.context import GatewayContext
from gateway.api.problems import problem
from gateway.api.urls import gateway_origin
from gateway.dial.dialer import CallRequest, DialError, HangupError
from gateway.dial.setup import DialServices
from gateway.dial.spec import PATH_ID, SpecError, parse_call


def dial_services(request: Request) -> DialServices:
    dial: DialServices = request.app.state.dial
    return dial


def pick_provider(dial: DialServices, named: str | None) -> str:
    """The provider a request names, else the configured default, else the only one that can dial."""
    if named:
        return named
    if dial.default_provider:
        return dial.default_provider
    able = sorted(dial.dialer.providers)
    if len(able) == 1:
        return able[0]
    raise SpecError("provider: required (twilio, vonage, telnyx or plivo); no dial.default_provider is configured")


def pick_caller_id(dial: DialServices, provider: str, named: str | None) -> str:
    caller = named or dial.caller_id.get(provider)
    if not caller:
        raise SpecError(f"from: required (no dial.caller_id.{provider} is configured)")
    return caller


def pick_route(dial: DialServices, provider: str | None, caller: str | None) -> tuple[str, str]:
    """(provider, caller id) for a new call or campaign; SpecError naming what is missing."""
    chosen = pick_provider(dial, provider)
    if (reason := dial.dialer.refusal_for(chosen)) is not None:
        raise SpecError(reason)
    return chosen, pick_caller_id(dial, chosen, caller)


def _dial_problem(error: DialError) -> Response:
    extra: dict[str, Any] = {}
    if error.record is not None:
        extra["workflow_run_id"] = error.record.workflow_run_id
        extra["call"] = error.record.to_dict()
    if error.refusal is not None:
        extra["provider_error"] = error.refusal.to_dict()
    return problem(error.status, error.detail, **extra)


async def place_call(request: Request) -> Response:
    """`POST /api/v1/calls` `{provider, to, from, workflow_id, user_id, initial_context,
    machine_detection, ring_timeout}` -> 201 with the call record."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx: GatewayContext = request.app.state.gateway
    dial = dial_services(request)
    if ctx.draining:
        return problem(503, "this gateway instance is draining; place calls through another instance")
    try:
        spec = parse_call(await json_body(request))
        provider, caller = pick_route(dial, spec.provider, spec.from_)
    except SpecError as error:
        return problem(400, str(error))
    call = CallRequest(
        provider=provider,
        to=spec.to,
        from_=caller,
        workflow_id=spec.workflow_id,
        user_id=spec.user_id,
        initial_context=spec.initial_context,
        machine_detection=spec.machine_detection,
        ring_timeout=spec.ring_timeout,
    )
    try:
        record = await dial.dialer.place_call(call, origin=gateway_origin(request, ctx))
    except DialError as error:
        return _dial_problem(error)
    ctx.live_calls.note(record)
    return JSONResponse(
        record.to_dict(), status_code=201, headers={"Location": f"/api/v1/calls/{record.workflow_run_id}"}
    )


async def hang_up(request: Request) -> Response:
    """`POST /api/v1/calls/{workflow_run_id}/hangup` `{reason?}` -> 202 once the provider
    accepted; the call's end arrives as usual through its status callbacks."""
    if (denied := authorized(request)) is not None:
        return denied
    run_id = request.path_params["workflow_run_id"]
    if not PATH_ID.match(run_id):
        return problem(404, "no such call")
    body = await json_body(request, optional=True)
    reason = body.get("reason")
    if not isinstance(reason, str):
        reason = "hangup requested through the API"
    try:
        result = await dial_services(request).dialer.hang_up(run_id, reason=reason[:200], source="api")
    except HangupError as error:
        extra: dict[str, Any] = {}
        if error.record is not None:
            extra["state"] = error.record.state.value
        if error.refusal is not None:
            extra["provider_error"] = error.refusal.to_dict()
        return problem(error.status, error.detail, workflow_run_id=run_id, **extra)
    return JSONResponse(
        {
            "workflow_run_id": run_id,
            "hangup": "requested",
            "state": result.record.state.value,
            "provider": result.record.provider,
            "provider_call_id": result.record.provider_call_id,
            "provider_status": result.provider_status,
        },
        status_code=202,
    )


routes = [
    Route("/api/v1/calls", place_call, methods=["POST"]),
    Route("/api/v1/calls/{workflow_run_id}/hangup", hang_up, methods=["POST"]),
]
