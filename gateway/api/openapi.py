"""`GET /api/v1/openapi.json`: the admin API described as OpenAPI 3.1.

Schemas come from the pydantic models the routes validate with (`CallSpec`, `CampaignSpec`) and
those in `gateway.api.schemas`; paths and answers are listed here once, per route. Every admin
route answers errors as problem+json, with the statuses each operation lists. The document is
built once per process (it depends on nothing configured) and is public: it holds no secret.
tests/api/test_openapi.py checks that it names exactly the app's admin routes; the schemathesis
run holds the answers to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import __version__
from gateway.api import schemas as s
from gateway.api.deliveries import STATUSES
from gateway.api.problems import PROBLEM_CONTENT_TYPE
from gateway.calls.states import CallState
from gateway.dial.spec import CallSpec, CampaignSpec
from gateway.store.campaigns import CAMPAIGN_STATUSES, CONTACT_STATUSES

OPENAPI_PATH = "/api/v1/openapi.json"
SECURITY_SCHEME = "adminKey"
_PAGE_LIMIT = {"type": "integer", "minimum": 1, "maximum": 500}
_ERRORS = {
    400: "The request is not usable; `detail` names what was wrong",
    401: "Missing or wrong admin API key",
    404: "No such resource",
    409: "Not possible in the resource's current state",
    413: "The body is over the size limit",
    422: "The subscription's request could not be built (e.g. a missing secret)",
    501: "Campaigns are not supported by this store",
    502: "The provider refused",
    503: "This instance is draining",
}


@dataclass(frozen=True)
class Operation:
    """One admin route: its answers (status -> model) and what it takes."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    ok: dict[int, type[BaseModel]]
    errors: tuple[int, ...] = ()
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    body: type[BaseModel] | None = None
    body_required: bool = True
    csv_body: bool = False
    public: bool = False


def _enum(values: Any) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


_RUN = "workflow_run_id"
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/api/v1/calls",
        "listCalls",
        "Calls, newest first",
        "calls",
        {200: s.CallPage},
        (400,),
        {"state": _enum(state.value for state in CallState), "limit": _PAGE_LIMIT, "cursor": {"type": "string"}},
    ),
    Operation(
        "post",
        "/api/v1/calls",
        "placeCall",
        "Place an outbound call",
        "calls",
        {201: s.Call},
        (400, 409, 413, 502, 503),
        body=CallSpec,
    ),
    Operation(
        "get",
        "/api/v1/calls/{workflow_run_id}",
        "getCall",
        "A call with its timeline",
        "calls",
        {200: s.CallWithTimeline},
        (404,),
    ),
    Operation(
        "get",
        "/api/v1/calls/{workflow_run_id}/events",
        "listCallEvents",
        "A call's events in order",
        "calls",
        {200: s.EventPage},
        (400, 404),
        {"after": {"type": "integer", "minimum": 0, "maximum": 10**17}, "limit": _PAGE_LIMIT},
    ),
    Operation(
        "post",
        "/api/v1/calls/{workflow_run_id}/clear",
        "clearCall",
        "Barge in: clear the agent's queued audio",
        "calls",
        {202: s.ClearRequested},
        (404, 409),
    ),
    Operation(
        "post",
        "/api/v1/calls/{workflow_run_id}/hangup",
        "hangUpCall",
        "End a live call at the provider",
        "calls",
        {202: s.HangupRequested},
        (400, 404, 409, 413, 502),
        body=s.HangupRequest,
        body_required=False,
    ),
    Operation(
        "get",
        "/api/v1/deliveries",
        "listDeliveries",
        "Webhook deliveries, newest first",
        "deliveries",
        {200: s.DeliveryPage},
        (400,),
        {
            "status": _enum(STATUSES),
            "subscription": {"type": "string"},
            "run": {"type": "string"},
            "limit": _PAGE_LIMIT,
            "cursor": {"type": "string"},
        },
    ),
    Operation(
        "post",
        "/api/v1/deliveries/replay",
        "replayDeliveries",
        "Queue a subscription's events of a time range again",
        "deliveries",
        {202: s.ReplayQueued},
        (400, 413),
        body=s.ReplayRequest,
    ),
    Operation(
        "get",
        "/api/v1/deliveries/{delivery_id}",
        "getDelivery",
        "A delivery, its event and every attempt",
        "deliveries",
        {200: s.DeliveryDetail},
        (404,),
    ),
    Operation(
        "post",
        "/api/v1/deliveries/{delivery_id}/retry",
        "retryDelivery",
        "Send a delivery again now",
        "deliveries",
        {202: s.Delivery},
        (404,),
    ),
    Operation(
        "get",
        "/api/v1/subscriptions",
        "listSubscriptions",
        "Configured webhooks (secrets redacted) and health",
        "webhooks",
        {200: s.SubscriptionList},
    ),
    Operation(
        "post",
        "/api/v1/subscriptions/{name}/enable",
        "enableSubscription",
        "Enable a disabled webhook endpoint",
        "webhooks",
        {200: s.Enabled},
        (404,),
    ),
    Operation(
        "post",
        "/api/v1/subscriptions/{name}/test",
        "testSubscription",
        "Render and send a test request (nothing is recorded)",
        "webhooks",
        {200: s.TestSendResult},
        (400, 404, 413, 422),
        body=s.TestSendRequest,
        body_required=False,
    ),
    Operation(
        "post",
        "/api/v1/campaigns",
        "createCampaign",
        "Create a campaign (JSON, or CSV with the fields in the query)",
        "campaigns",
        {201: s.CampaignCreated},
        (400, 413, 501, 503),
        body=CampaignSpec,
        csv_body=True,
    ),
    Operation(
        "get",
        "/api/v1/campaigns",
        "listCampaigns",
        "Campaigns, newest first",
        "campaigns",
        {200: s.CampaignPage},
        (400, 501),
        {"status": _enum(CAMPAIGN_STATUSES), "limit": _PAGE_LIMIT, "cursor": {"type": "string"}},
    ),
    Operation(
        "get",
        "/api/v1/campaigns/{campaign_id}",
        "getCampaign",
        "A campaign with its statistics",
        "campaigns",
        {200: s.Campaign},
        (404, 501),
    ),
    Operation(
        "get",
        "/api/v1/campaigns/{campaign_id}/contacts",
        "listCampaignContacts",
        "A campaign's contacts",
        "campaigns",
        {200: s.ContactPage},
        (400, 404, 501),
        {"status": _enum(CONTACT_STATUSES), "limit": _PAGE_LIMIT, "after": {"type": "integer", "minimum": -1}},
    ),
    *(
        Operation(
            "post",
            f"/api/v1/campaigns/{{campaign_id}}/{action}",
            f"{action}Campaign",
            f"{action.capitalize()} a campaign",
            "campaigns",
            {200: s.Campaign},
            (404, 409, 501),
        )
        for action in ("pause", "resume", "cancel")
    ),
    Operation(
        "get",
        "/api/v1/tunnel",
        "getTunnel",
        "The public origin providers are given",
        "operations",
        {200: s.TunnelStatus},
        (400,),
        {"refresh": {"type": "string", "enum": ["true", "false"]}},
    ),
)


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [s.Problem]
    for op in OPERATIONS:
        for model in (*op.ok.values(), op.body):
            if model is not None and model not in found:
                found.append(model)
    return found


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params = [
        {"name": name[1:-1], "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in op.path.split("/")
        if name.startswith("{")
    ]
    params += [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in op.query.items()]
    if op.csv_body:
        params += [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "with a CSV body: the campaign's field (options as JSON text)",
            }
            for name in ("name", "workflow_id", "user_id", "provider", "from", "options")
        ]
    return params


def _operation(op: Operation, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if params := _parameters(op):
        out["parameters"] = params
    if op.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": refs[op.body]}}
        if op.csv_body:
            content["text/csv"] = {
                "schema": {"type": "string", "description": "contacts with a header row (phone, name, ...)"}
            }
        out["requestBody"] = {"required": op.body_required, "content": content}
    responses: dict[str, Any] = {
        str(code): {
            "description": model.__doc__.strip().splitlines()[0] if model.__doc__ else "OK",
            "content": {"application/json": {"schema": refs[model]}},
        }
        for code, model in op.ok.items()
    }
    for code in (*op.errors, 401) if not op.public else op.errors:
        responses[str(code)] = {
            "description": _ERRORS[code],
            "content": {PROBLEM_CONTENT_TYPE: {"schema": refs[s.Problem]}},
        }
    if 401 in map(int, responses):
        responses["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    out["responses"] = dict(sorted(responses.items()))
    if op.public:
        out["security"] = []
    return out


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API."""
    models = _models()
    keys, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    refs = {model: keys[(model, "validation")] for model in models}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    paths[OPENAPI_PATH] = {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document",
            "tags": ["operations"],
            "security": [],
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Telephony gateway admin API",
            "version": __version__,
            "description": "Calls, webhook deliveries and subscriptions, campaigns. Every error is "
            "application/problem+json whose `detail` says what was wrong.",
        },
        "servers": [{"url": "/"}],
        "security": [{SECURITY_SCHEME: []}],
        "tags": [{"name": name} for name in ("calls", "deliveries", "webhooks", "campaigns", "operations")],
        "paths": paths,
        "components": {
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the gateway's `api_key`: `Authorization: Bearer <api_key>`",
                }
            },
            "schemas": definitions.get("$defs", {}),
        },
    }


async def openapi(request: Request) -> Response:
    """`GET /api/v1/openapi.json`."""
    return JSONResponse(document())


routes = [Route(OPENAPI_PATH, openapi, methods=["GET"])]
