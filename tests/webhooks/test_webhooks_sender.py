"""One attempt end to end against a real receiver: bodies, outcomes, timeouts, redaction, mapping."""

from __future__ import annotations

import json
import time

import pytest

from gateway.webhooks.clients import EndpointClients
from gateway.webhooks.policy import Outcome, map_response
from gateway.webhooks.sender import (
    RESPONSE_TEXT_LIMIT,
    RequestBuildError,
    build_request,
    send_attempt,
)
from gateway.webhooks.subscription import Subscription

ENVELOPE = {
    "type": "call.ended",
    "timestamp": "2026-01-01T00:00:00Z",
    "data": {"workflow_run_id": "run-42", "state": "completed", "duration": 93},
}
CONTEXT = {
    "workflow_run_id": "run-42",
    "call": {"duration": 93, "state": "completed"},
    "initial_context": {"tenant": "acme", "customer_name": "Ada"},
    "gathered_context": {"resolution": "paid"},
}
SECRETS = {"CRM_TOKEN": "crm-token-d41d8cd9", "QUERY_KEY": "q/key&=1"}


def subscription(url: str, **fields) -> Subscription:
    return Subscription.model_validate(
        {
            "name": "crm",
            "events": ["call.ended"],
            "url": url,
            "signing": {"scheme": "none"},
            "allow_networks": ["127.0.0.0/8"],
            "timeout": 5,
            **fields,
        }
    )


async def send(sub: Subscription, *, context=CONTEXT, secrets=SECRETS):
    clients = EndpointClients()
    try:
        prepared = build_request(sub, ENVELOPE, context, secrets, message_id="msg_send", now=time.time())
        return prepared, await send_attempt(clients, prepared, sub)
    finally:
        await clients.aclose()


def test_default_body_is_the_envelope():
    prepared = build_request(subscription("https://crm.example.com/x"), ENVELOPE, {}, {}, message_id="m1", now=1)
    assert prepared.method == "POST"
    assert json.loads(prepared.body) == ENVELOPE
    assert prepared.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_carry_no_body_by_default(method):
    prepared = build_request(subscription("https://crm.example.com/x", method=method), ENVELOPE, {}, {}, message_id="m1", now=1)
    assert prepared.body == b"" and "Content-Type" not in prepared.headers


def test_payload_template_url_and_headers_are_rendered():
    sub = subscription(
        "https://crm.example.com/calls/{{workflow_run_id}}?tenant={{initial_context.tenant}}&k={{secret.QUERY_KEY}}",
        method="put",
        headers={"X-Tenant": "{{initial_context.tenant}}", "X-Event": "{{event.type}}"},
        payload_template={
            "run_id": "{{workflow_run_id}}",
            "outcome": "{{gathered_context.resolution}}",
            "duration": "{{call.duration}}",
            "missing": "{{cost_info.total}}",
        },
    )
    prepared = build_request(sub, ENVELOPE, CONTEXT, SECRETS, message_id="m1", now=1)
    assert prepared.method == "PUT"
    assert prepared.url == "https://crm.example.com/calls/run-42?tenant=acme&k=q%2Fkey%26%3D1"
    assert prepared.headers["X-Tenant"] == "acme" and prepared.headers["X-Event"] == "call.ended"
    assert json.loads(prepared.body) == {"run_id": "run-42", "outcome": "paid", "duration": 93, "missing": None}
    assert "q%2Fkey" not in json.dumps(prepared.redacted())


def test_header_injection_is_refused():
    sub = subscription("https://crm.example.com/x", headers={"X-Name": "{{initial_context.customer_name}}"})
    with pytest.raises(RequestBuildError, match="line break"):
        build_request(sub, ENVELOPE, {"initial_context": {"customer_name": "Ada\r\nX-Evil: 1"}}, {}, message_id="m", now=1)


def test_missing_secret_is_a_build_error_naming_it():
    sub = subscription("https://crm.example.com/x", auth={"type": "bearer_token", "token": "{{secret.NOPE}}"})
    with pytest.raises(RequestBuildError, match="auth.token: secret 'NOPE' is not set"):
        build_request(sub, ENVELOPE, {}, SECRETS, message_id="m", now=1)


def test_rendered_url_must_stay_http():
    sub = subscription("https://{{initial_context.host}}/x")
    with pytest.raises(RequestBuildError, match="url"):
        build_request(sub, ENVELOPE, {"initial_context": {"host": ""}}, {}, message_id="m", now=1)


async def test_success_with_response_mapping(receiver):
    receiver.handler = lambda received: receiver.reply(200, '{"ok": true, "data": {"tier": "gold"}}')
    sub = subscription(
        receiver.url("/calls/{{workflow_run_id}}"),
        success={"status": ["2xx"], "expression": "ok == `true`"},
        response_mapping={"customer_tier": "data.tier"},
    )
    _prepared, result = await send(sub)
    assert result.outcome is Outcome.SUCCESS and result.success
    assert result.status == 200 and result.response_json == {"ok": True, "data": {"tier": "gold"}}
    assert result.latency_ms > 0
    assert receiver.on("/calls/run-42")[0].headers["webhook-id"] == "msg_send"
    assert map_response(sub.name, result.status, result.response_json, sub.response_mapping, success=result.success) == {
        "customer_tier": "gold",
        "crm_status_code": 200,
        "crm_action_success": True,
    }


async def test_expression_false_is_a_failure(receiver):
    receiver.handler = lambda received: receiver.reply(200, '{"ok": false}')
    _prepared, result = await send(subscription(receiver.url(), success={"expression": "ok == `true`"}))
    assert result.outcome is Outcome.FAIL and result.status == 200


@pytest.mark.parametrize(
    ("status", "headers", "outcome", "retry_after"),
    [
        (503, {"retry-after": "120"}, Outcome.RETRY, 120.0),
        (429, {"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}, Outcome.RETRY, None),
        (410, {}, Outcome.DISABLE, None),
        (404, {}, Outcome.FAIL, None),
        (500, {}, Outcome.RETRY, None),
    ],
)
async def test_statuses_and_retry_after(receiver, status, headers, outcome, retry_after):
    receiver.handler = lambda received: receiver.reply(status, "{}", headers)
    _prepared, result = await send(subscription(receiver.url()))
    assert result.outcome is outcome and result.status == status
    if status == 429:
        assert result.retry_after > 3600
    else:
        assert result.retry_after == retry_after


async def test_timeout_is_a_retry(receiver):
    receiver.handler = lambda received: receiver.reply(delay=3)
    started = time.perf_counter()
    _prepared, result = await send(subscription(receiver.url(), timeout=0.5))
    assert time.perf_counter() - started < 2
    assert result.outcome is Outcome.RETRY and result.status is None
    assert "Timeout" in result.error


async def test_connection_refused_is_a_retry(counter):
    port = counter.port
    counter.close()  # nothing listens there any more
    _prepared, result = await send(subscription(f"http://127.0.0.1:{port}/x"))
    assert result.outcome is Outcome.RETRY and result.status is None and result.error


async def test_response_text_is_truncated(receiver):
    receiver.handler = lambda received: receiver.reply(200, "x" * 100_000, {"content-type": "text/plain"})
    _prepared, result = await send(subscription(receiver.url()))
    assert result.outcome is Outcome.SUCCESS
    assert len(result.response_text) == RESPONSE_TEXT_LIMIT and result.response_json is None


async def test_secrets_never_appear_in_results_even_when_echoed(receiver):
    def echo(received):
        return receiver.reply(500, json.dumps({"headers": received.headers, "body": received.body.decode(), "query": received.query}))

    receiver.handler = echo
    sub = subscription(
        receiver.url("/echo") + "?key={{secret.QUERY_KEY}}",
        auth={"type": "bearer_token", "token": "{{secret.CRM_TOKEN}}"},
        headers={"X-Copy": "token={{secret.CRM_TOKEN}}"},
        payload_template={"token": "{{secret.CRM_TOKEN}}", "run": "{{workflow_run_id}}"},
    )
    prepared, result = await send(sub)
    received = receiver.on("/echo")[0]
    assert received.headers["authorization"] == f"Bearer {SECRETS['CRM_TOKEN']}"  # it was really sent
    everything = repr(result) + repr(prepared) + json.dumps(prepared.redacted())
    for value in SECRETS.values():
        assert value not in everything
    assert "q%2Fkey" not in everything
    assert result.request["headers"]["Authorization"] == "[redacted]"
    assert result.response_json["headers"]["authorization"] == "[redacted]"
    assert "run-42" in result.request["body"]


async def test_refused_destination_error_names_host_not_secrets(counter):
    sub = subscription(f"http://localhost:{counter.port}/x?k={{{{secret.QUERY_KEY}}}}", allow_networks=[])
    _prepared, result = await send(sub)
    assert result.outcome is Outcome.FAIL
    assert "localhost" in result.error and "127.0.0.1" in result.error
    assert SECRETS["QUERY_KEY"] not in repr(result)


async def test_an_attempts_record_shows_a_rendered_body_and_not_the_event_envelope(receiver):
    receiver.handler = lambda received: receiver.reply(200, "{}")
    _prepared, enveloped = await send(subscription(receiver.url("/default")))
    assert enveloped.request["body"] is None  # the event envelope: the delivery's event, stored once
    assert enveloped.request["method"] == "POST" and enveloped.request["headers"]["webhook-id"] == "msg_send"
    assert receiver.on("/default")[0].body  # it was sent, whole
    _prepared, templated = await send(subscription(receiver.url("/templated"), payload_template={"run": "{{workflow_run_id}}"}))
    assert templated.request["body"] == '{"run":"run-42"}'
