"""Campaigns (admin API, bearer `api_key`).

- `POST /api/v1/campaigns`: JSON `{name?, workflow_id, user_id, provider?, from?, contacts |
  contacts_csv, options}`, or a CSV upload (`Content-Type: text/csv`, the other fields in the
  query string, `options` as JSON text).
- `GET /api/v1/campaigns`, `GET /api/v1/campaigns/{id}` (with Dialgen `statistics`),
  `GET /api/v1/campaigns/{id}/contacts`.
- `POST /api/v1/campaigns/{id}/pause | resume | cancel`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.admin import authorized
from gateway.api.body import BadBody, BodyTooLarge, json_body, read_limited_body
from gateway.api.calls import dial_services, pick_route
from gateway.api.context import GatewayContext
from gateway.api.problems import problem
from gateway.api.query import int_param
from gateway.api.urls import gateway_origin
from gateway.dial.payloads import campaign_view, contact_view
from gateway.dial.spec import SpecError, parse_campaign
from gateway.providers.base import BadRequest, parse_json_object
from gateway.store.base import StoreError
from gateway.store.campaigns import CAMPAIGN_STATUSES, CONTACT_STATUSES

MAX_BODY = 16 * 1024 * 1024
_QUERY_FIELDS = ("name", "workflow_id", "user_id", "provider", "from")


def _unsupported(request: Request) -> Response | None:
    ctx: GatewayContext = request.app.state.gateway
    if not getattr(ctx.store, "supports_campaigns", False):
        return problem(501, f"campaigns are not supported by the {type(ctx.store).__name__} store yet")
    return None


async def _campaign_body(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("text/csv", "application/csv"):
        return await json_body(request, limit=MAX_BODY)
    try:
        raw = await read_limited_body(request, MAX_BODY)
    except BodyTooLarge as error:
        raise BadBody(413, str(error)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody(400, "the CSV upload must be UTF-8") from None
    data: dict[str, Any] = {key: request.query_params[key] for key in _QUERY_FIELDS if key in request.query_params}
    unknown = sorted(set(request.query_params) - set(_QUERY_FIELDS) - {"options"})
    if unknown:
        raise BadBody(400, f"{unknown[0]}: unknown query parameter (use {', '.join(_QUERY_FIELDS)} or options)")
    if "options" in request.query_params:
        try:
            data["options"] = parse_json_object(request.query_params["options"].encode())
        except BadRequest as error:
            raise BadBody(400, f"options: the query parameter must be a JSON object ({error})") from None
    data["contacts_csv"] = text
    return data


async def create_campaign(request: Request) -> Response:
    if (denied := authorized(request) or _unsupported(request)) is not None:
        return denied
    ctx: GatewayContext = request.app.state.gateway
    dial = dial_services(request)
    if ctx.draining:
        return problem(503, "this gateway instance is draining; create campaigns through another instance")
    try:
        spec = parse_campaign(await _campaign_body(request))
        provider, caller = pick_route(dial, spec.provider, spec.from_)
    except SpecError as error:
        return problem(400, str(error))
    campaign, secret, dropped = await dial.campaigns.create(
        spec, provider=provider, from_number=caller, origin=gateway_origin(request, ctx)
    )
    dial.runner.wake()
    body = campaign_view(campaign)
    body["duplicates_dropped"] = dropped
    if secret:
        body["webhook_secret"] = secret  # shown once: the inline webhooks are signed with it
    return JSONResponse(body, status_code=201, headers={"Location": f"/api/v1/campaigns/{campaign.id}"})


async def list_campaigns(request: Request) -> Response:
    if (denied := authorized(request) or _unsupported(request)) is not None:
        return denied
    status = request.query_params.get("status") or None
    if status is not None and status not in CAMPAIGN_STATUSES:
        return problem(400, f"status must be one of {', '.join(CAMPAIGN_STATUSES)}")
    limit = int_param(request.query_params.get("limit", "50"), low=1, high=500)
    if limit is None:
        return problem(400, "limit must be an integer from 1 to 500")
    ctx: GatewayContext = request.app.state.gateway
    try:
        rows, cursor = await ctx.store.list_campaigns(
            status=status, limit=limit, cursor=request.query_params.get("cursor") or None
        )
    except StoreError as error:
        return problem(400, str(error))
    return JSONResponse({"campaigns": [campaign_view(c) for c in rows], "next_cursor": cursor})


async def get_campaign(request: Request) -> Response:
    if (denied := authorized(request) or _unsupported(request)) is not None:
        return denied
    ctx: GatewayContext = request.app.state.gateway
    campaign = await ctx.store.get_campaign(request.path_params["campaign_id"])
    if campaign is None:
        return problem(404, "no such campaign")
    return JSONResponse(campaign_view(campaign))


async def list_contacts(request: Request) -> Response:
    """`GET /api/v1/campaigns/{id}/contacts?status=&limit=&after=` (after: a position)."""
    if (denied := authorized(request) or _unsupported(request)) is not None:
        return denied
    ctx: GatewayContext = request.app.state.gateway
    campaign_id = request.path_params["campaign_id"]
    if await ctx.store.get_campaign(campaign_id) is None:
        return problem(404, "no such campaign")
    query = request.query_params
    status = query.get("status") or None
    if status is not None and status not in CONTACT_STATUSES:
        return problem(400, f"status must be one of {', '.join(CONTACT_STATUSES)}")
    limit = int_param(query.get("limit", "100"), low=1, high=500)
    after = int_param(query.get("after", "-1"), low=-1, high=2**63 - 1)
    if limit is None:
        return problem(400, "limit must be an integer from 1 to 500")
    if after is None:
        return problem(400, "after must be a contact position")
    rows = await ctx.store.list_campaign_contacts(campaign_id, status=status, limit=limit, after=after)
    more = len(rows) == limit
    return JSONResponse(
        {"contacts": [contact_view(c) for c in rows], "next_after": rows[-1].position if more else None}
    )


def _action(name: str) -> Callable[[Request], Awaitable[Response]]:
    async def act(request: Request) -> Response:
        if (denied := authorized(request) or _unsupported(request)) is not None:
            return denied
        dial = dial_services(request)
        campaign = await getattr(dial.campaigns, name)(request.path_params["campaign_id"])
        dial.runner.wake()
        return JSONResponse(campaign_view(campaign))

    act.__name__ = f"{name}_campaign"
    act.__doc__ = f"`POST /api/v1/campaigns/{{id}}/{name}`."
    return act


routes = [
    Route("/api/v1/campaigns", create_campaign, methods=["POST"]),
    Route("/api/v1/campaigns", list_campaigns, methods=["GET"]),
    Route("/api/v1/campaigns/{campaign_id}", get_campaign, methods=["GET"]),
    Route("/api/v1/campaigns/{campaign_id}/contacts", list_contacts, methods=["GET"]),
    *(
        Route(f"/api/v1/campaigns/{{campaign_id}}/{name}", _action(name), methods=["POST"])
        for name in ("pause", "resume", "cancel")
    ),
]
