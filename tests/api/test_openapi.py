"""The admin API's OpenAPI document: served, exactly the app's admin routes, and held to by a
real `gateway serve` under schemathesis (tests/api/test_openapi_fuzz.py)."""

from __future__ import annotations

import httpx
from starlette.routing import Route

from gateway.api.openapi import OPENAPI_PATH, SECURITY_SCHEME, document
from gateway.app import create_app
from gateway.config import parse_config
from support import API_KEY, base_config

NOT_ADMIN = ("/api/v1/telephony/", "/api/v1/recordings/", "/api/v1/transcripts/")


def test_the_document_names_exactly_the_admin_routes(tmp_path):
    app = create_app(parse_config(base_config(tmp_path), env={}))
    served = {(method.lower(), route.path) for route in app.routes if isinstance(route, Route)
              and route.path.startswith("/api/v1/") and not route.path.startswith(NOT_ADMIN)
              for method in route.methods or () if method != "HEAD"}
    documented = {(method, path) for path, item in document()["paths"].items() for method in item}
    assert documented == served
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if path == OPENAPI_PATH:
                assert operation["security"] == []
                continue
            assert "401" in operation["responses"], (method, path)
            assert "security" not in operation  # the document's own: the admin key


def test_served_as_openapi_3_1_with_the_admin_key_scheme(gateway_server):
    server = gateway_server()
    answer = httpx.get(server.url + OPENAPI_PATH)  # public: it holds no secret
    assert answer.status_code == 200 and answer.json() == document()
    doc = answer.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"][SECURITY_SCHEME] == {
        "type": "http", "scheme": "bearer", "description": "the gateway's `api_key`: `Authorization: Bearer <api_key>`"}
    assert doc["security"] == [{SECURITY_SCHEME: []}]
    # Request bodies are the very models the routes validate with.
    call_body = doc["paths"]["/api/v1/calls"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert call_body == {"$ref": "#/components/schemas/CallSpec"}
    assert set(doc["components"]["schemas"]["CallSpec"]["required"]) == {"to", "workflow_id", "user_id"}
    assert "from" in doc["components"]["schemas"]["CallSpec"]["properties"]
    assert httpx.get(server.url + "/api/v1/calls", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def _keys(model):
    return {field.alias or name for name, field in model.model_fields.items()}


def test_the_response_models_name_exactly_what_the_routes_write():
    """The schemas are the routes' own dict writers' keys, so a key added to one is a key to
    describe (the bodies allow more keys, so schemathesis alone would not notice)."""
    from datetime import datetime, timezone

    from gateway.api import schemas
    from gateway.calls.record import CallRecord
    from gateway.events.envelope import Event
    from gateway.store.base import AttemptRecord, Delivery, EndpointHealth, TimelineEntry

    now = datetime.now(timezone.utc)
    delivery = Delivery(id="msg_1", event_seq=1, subscription="crm", workflow_run_id="r", status="pending", attempts=0,
                        next_attempt_at=now, created_at=now, updated_at=now)
    assert _keys(schemas.Call) == set(CallRecord(workflow_run_id="r").to_dict())
    assert _keys(schemas.TimelineEntry) == set(TimelineEntry(id=1, received_at=now, source="s", kind="k", outcome="o").to_dict())
    assert _keys(schemas.Delivery) == set(delivery.to_dict())
    assert _keys(schemas.DeliveryDetail) == set(delivery.to_dict()) | {"event"}
    assert _keys(schemas.Attempt) == set(AttemptRecord(attempted_at=now, outcome="success").to_dict())
    assert _keys(schemas.Event) == set(Event("call.ringing", "r", now).envelope())
    assert _keys(schemas.Health) == set(EndpointHealth("crm").to_dict())
    from gateway.api.deliveries import subscription_view
    from gateway.dial.payloads import campaign_view, contact_view
    from gateway.store.campaigns import Campaign, CampaignContact
    from gateway.webhooks.subscription import Subscription
    from gateway.webhooks.templates import Redactor
    from gateway.webhooks.trial import Trial

    campaign = Campaign(id="cmp_1", workflow_id="w", user_id="u", provider="twilio", from_number="+1", status="running",
                        options={}, origin="http://x", total=1, created_at=now, updated_at=now)
    assert _keys(schemas.Campaign) == set(campaign_view(campaign))
    assert _keys(schemas.CampaignCreated) == set(campaign_view(campaign)) | {"duplicates_dropped", "webhook_secret"}
    assert _keys(schemas.Contact) == set(contact_view(CampaignContact(campaign_id="cmp_1", position=0, phone="+1")))
    view = subscription_view(Subscription(name="crm", events=["call.*"], url="http://x"), Redactor())
    assert _keys(schemas.SubscriptionView) == set(view) | {"health", "inputs", "test_event"}
    trial = Trial(subscription="crm", event_type="call.ended", request={}, status=200, latency_ms=1.0, response_text="",
                  error=None, outcome="success", success=True, mapped={}).to_dict()
    assert _keys(schemas.TestSendResult) == set(trial)
    assert _keys(schemas.TestResponse) == set(trial["response"]) and _keys(schemas.Verdict) == set(trial["verdict"])
