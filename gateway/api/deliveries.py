"""Operating the outbound webhooks: deliveries, retries, replays, subscriptions (admin API)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.admin import authorized
from gateway.api.body import json_body
from gateway.api.context import GatewayContext
from gateway.api.problems import problem
from gateway.api.query import int_param
from gateway.redact import REDACTED, Redactor, redact_url
from gateway.store.base import StoreError
from gateway.webhooks.sender import RequestBuildError
from gateway.webhooks.subscription import Subscription
from gateway.webhooks.trial import TrialInputError, default_event_type, run_trial

STATUSES = ("pending", "succeeded", "failed", "dead")

_PUBLIC_AUTH_FIELDS = {"type", "header", "name", "token_url", "scope", "client_auth", "cert", "ca_bundle"}


def _ctx(request: Request) -> GatewayContext:
    ctx: GatewayContext = request.app.state.gateway
    return ctx


def _now() -> datetime:
    return datetime.now(UTC)


async def list_deliveries(request: Request) -> Response:
    """`GET /api/v1/deliveries?status=&subscription=&run=&limit=&cursor=`."""
    if (denied := authorized(request)) is not None:
        return denied
    query = request.query_params
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        return problem(400, f"status must be one of {', '.join(STATUSES)}")
    limit = int_param(query.get("limit", "50"), low=1, high=500)
    if limit is None:
        return problem(400, "limit must be an integer from 1 to 500")
    try:
        rows, cursor = await _ctx(request).store.list_deliveries(
            status=status,
            subscription=query.get("subscription") or None,
            run_id=query.get("run") or None,
            limit=limit,
            cursor=query.get("cursor") or None,
        )
    except StoreError as exc:
        return problem(400, str(exc))
    return JSONResponse({"deliveries": [row.to_dict() for row in rows], "next_cursor": cursor})


async def get_delivery(request: Request) -> Response:
    """`GET /api/v1/deliveries/{id}`: the delivery, its event and every attempt (redacted)."""
    if (denied := authorized(request)) is not None:
        return denied
    found = await _ctx(request).store.get_delivery(request.path_params["delivery_id"])
    if found is None:
        return problem(404, "no such delivery")
    delivery, attempts = found
    body = delivery.to_dict()
    body["event"] = delivery.event.envelope() if delivery.event else None
    body["attempts"] = [attempt.to_dict() for attempt in attempts]
    return JSONResponse(body)


async def retry_delivery(request: Request) -> Response:
    """`POST /api/v1/deliveries/{id}/retry`: due now, its retry schedule started afresh."""
    if (denied := authorized(request)) is not None:
        return denied
    delivery = await _ctx(request).store.retry_delivery(request.path_params["delivery_id"], now=_now())
    if delivery is None:
        return problem(404, "no such delivery")
    return JSONResponse(delivery.to_dict(), status_code=202)


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be an RFC 3339 time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} is not an RFC 3339 time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone (e.g. Z)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name} is out of range: {value[:40]!r}") from None


async def replay(request: Request) -> Response:
    """`POST /api/v1/deliveries/replay` `{"subscription", "since", "until"}`."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx = _ctx(request)
    body = await json_body(request, optional=True)
    try:
        name = body.get("subscription")
        subscription = next((s for s in ctx.config.webhooks if s.name == name), None)
        if subscription is None:
            raise ValueError(f"subscription must name a configured webhook, not {str(name)[:64]!r}")
        since = _parse_time(body.get("since"), "since")
        until = _parse_time(body.get("until", _now().isoformat()), "until")
        if until <= since:
            raise ValueError("until must be after since")
    except ValueError as exc:
        return problem(400, str(exc))
    count = await ctx.store.replay_deliveries(
        subscription.name,
        since=since,
        until=until,
        now=_now(),
        matches=subscription.matches,
        ordered=subscription.ordered,
    )
    return JSONResponse({"subscription": subscription.name, "queued": count}, status_code=202)


def subscription_view(subscription: Subscription, redactor: Redactor) -> dict[str, Any]:
    """A subscription as configured, with every credential and signing secret redacted."""
    data = subscription.model_dump(mode="json")
    data["auth"] = {k: (v if k in _PUBLIC_AUTH_FIELDS or v is None else REDACTED) for k, v in data["auth"].items()}
    signing = data.get("signing") or {}
    if "secrets" in signing:
        signing["secrets"] = [REDACTED for _ in signing["secrets"]]
    if "secret" in signing:
        signing["secret"] = REDACTED
    data["url"] = redact_url(data["url"])
    if isinstance(data["auth"].get("token_url"), str):
        data["auth"]["token_url"] = redact_url(data["auth"]["token_url"])
    view: dict[str, Any] = redactor.value(data)  # a mapping stays a mapping
    return view


async def list_subscriptions(request: Request) -> Response:
    """`GET /api/v1/subscriptions`: the configuration (secrets redacted) and endpoint health."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx = _ctx(request)
    health = await ctx.store.endpoint_health()
    redactor = Redactor(ctx.config.secret_values().values())
    out = []
    for subscription in ctx.config.webhooks:
        view = subscription_view(subscription, redactor)
        state = health.get(subscription.name)
        view["health"] = state.to_dict() if state else {"consecutive_failures": 0, "disabled_at": None}
        view["inputs"] = subscription.inputs()
        view["test_event"] = default_event_type(subscription)
        out.append(view)
    return JSONResponse({"subscriptions": out})


async def enable_subscription(request: Request) -> Response:
    """`POST /api/v1/subscriptions/{name}/enable`: undo an automatic disable; its rows flow again."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx = _ctx(request)
    name = request.path_params["name"]
    if not any(s.name == name for s in ctx.config.webhooks):
        return problem(404, "no such subscription")
    await ctx.store.set_endpoint_disabled(name, reason=None, now=_now())
    if ctx.worker is not None:
        await ctx.worker.refresh_health()
        ctx.worker.wake()
    return JSONResponse({"subscription": name, "enabled": True})


_EVENT_NAME = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)+\Z")


def _trial_body(body: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """(inputs, event type, run id) of a test send's body; ValueError naming the field."""
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict):
        raise ValueError("inputs must be an object of {context path: value}")
    event = body.get("event")
    if event is not None and (not isinstance(event, str) or not _EVENT_NAME.match(event) or len(event) > 64):
        raise ValueError("event must be an event name such as call.ended")
    run = body.get("run")
    if run is not None and (not isinstance(run, str) or not 1 <= len(run) <= 128):
        raise ValueError("run must be a workflow_run_id")
    unknown = sorted(set(body) - {"inputs", "event", "run"})
    if unknown:
        raise ValueError(f"{unknown[0][:64]}: unknown field (use inputs, event, run)")
    return inputs, event, run


async def test_subscription(request: Request) -> Response:
    """`POST /api/v1/subscriptions/{name}/test` `{inputs?, event?, run?}`: render the subscription's
    templates for a sample call (or the stored call `run`) with `inputs` placed at their context
    paths, send it as a delivery would be sent, and answer the request, the response, the verdict
    and the mapped attributes, secrets redacted. Nothing is recorded."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx = _ctx(request)
    name = request.path_params["name"]
    subscription = next((s for s in ctx.config.webhooks if s.name == name), None)
    if subscription is None:
        return problem(404, "no such subscription")
    try:
        inputs, event, run = _trial_body(await json_body(request, optional=True))
    except ValueError as error:
        return problem(400, str(error))
    call = None
    if run is not None and (call := await ctx.store.get_call(run)) is None:
        return problem(404, f"no call with workflow_run_id {run[:128]!r}")
    try:
        trial = await run_trial(subscription, ctx.config.secret_values(), inputs=inputs, event_type=event, call=call)
    except TrialInputError as error:
        return problem(400, str(error))
    except RequestBuildError as error:
        return problem(422, f"the request could not be built: {error}")
    return JSONResponse(trial.to_dict())


routes = [
    Route("/api/v1/deliveries", list_deliveries, methods=["GET"]),
    Route("/api/v1/deliveries/replay", replay, methods=["POST"]),
    Route("/api/v1/deliveries/{delivery_id}", get_delivery, methods=["GET"]),
    Route("/api/v1/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
    Route("/api/v1/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/api/v1/subscriptions/{name}/enable", enable_subscription, methods=["POST"]),
    Route("/api/v1/subscriptions/{name}/test", test_subscription, methods=["POST"]),
]
