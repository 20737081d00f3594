"""Operating the outbound webhooks: deliveries, retries, replays, subscriptions (admin API)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.admin import authorized
from gateway.api.body import BadBody, json_body
from gateway.api.context import GatewayContext
from gateway.api.problems import problem
from gateway.api.query import int_param
from gateway.store.base import StoreError
from gateway.redact import REDACTED, Redactor, redact_url
from gateway.webhooks.subscription import Subscription

STATUSES = ("pending", "succeeded", "failed", "dead")

_PUBLIC_AUTH_FIELDS = {"type", "header", "name", "token_url", "scope", "client_auth", "cert", "ca_bundle"}


def _ctx(request: Request) -> GatewayContext:
    return request.app.state.gateway


def _now() -> datetime:
    return datetime.now(timezone.utc)


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
            status=status, subscription=query.get("subscription") or None, run_id=query.get("run") or None,
            limit=limit, cursor=query.get("cursor") or None,
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
    return parsed.astimezone(timezone.utc)


async def replay(request: Request) -> Response:
    """`POST /api/v1/deliveries/replay` `{"subscription", "since", "until"}`."""
    if (denied := authorized(request)) is not None:
        return denied
    ctx = _ctx(request)
    try:
        body = await json_body(request, optional=True)
    except BadBody as exc:
        return problem(exc.status, exc.detail)
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
    count = await ctx.store.replay_deliveries(subscription.name, since=since, until=until, now=_now(),
                                              matches=subscription.matches, ordered=subscription.ordered)
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
    return redactor.value(data)


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


routes = [
    Route("/api/v1/deliveries", list_deliveries, methods=["GET"]),
    Route("/api/v1/deliveries/replay", replay, methods=["POST"]),
    Route("/api/v1/deliveries/{delivery_id}", get_delivery, methods=["GET"]),
    Route("/api/v1/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
    Route("/api/v1/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/api/v1/subscriptions/{name}/enable", enable_subscription, methods=["POST"]),
]
