"""`POST /api/v1/subscriptions/{name}/test`: a subscription's templates rendered with a person's
inputs and sent through the delivery sender to a real receiver; nothing recorded, secrets redacted."""

from __future__ import annotations

import json

import httpx
from standardwebhooks import Webhook

from support import API_KEY, Receiver, twilio_status_callback, wait_until

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "tok-secret-test-send-42"


def admin(server, method, path, **kw):
    return httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=20, **kw)


def crm(receiver, **overrides):
    sub = {
        "name": "crm", "events": ["call.ended"], "url": receiver.url + "/hooks/{{initial_context.tenant}}",
        "auth": {"type": "bearer_token", "token": "{{secret.CRM_TOKEN}}"},
        "signing": {"scheme": "standard", "secrets": [WHSEC]},
        "headers": {"X-Caller": "{{call.from_number}}"},
        "payload_template": {"run": "{{workflow_run_id}}", "who": "{{initial_context.name | anonymous}}",
                             "seconds": "{{call.duration}}"},
        "response_mapping": {"tier": "customer.tier"}, "allow_networks": ["127.0.0.0/8"], "timeout": 5,
    }
    sub.update(overrides)
    return sub


def test_the_listing_names_the_template_inputs(gateway_server):
    with Receiver() as receiver:
        server = gateway_server(webhooks=[crm(receiver)], secrets={"CRM_TOKEN": TOKEN})
        [sub] = admin(server, "GET", "/api/v1/subscriptions").json()["subscriptions"]
        assert sub["inputs"] == ["call.duration", "call.from_number", "initial_context.name", "initial_context.tenant",
                                 "workflow_run_id"]
        assert sub["test_event"] == "call.ended"
        assert sub["auth"]["token"] == "[redacted]" and sub["signing"]["secrets"] == ["[redacted]"]


def test_send_renders_the_inputs_sends_signed_and_answers_redacted(gateway_server):
    answer = json.dumps({"customer": {"tier": "gold"}, "echo": TOKEN}).encode()
    with Receiver(lambda n, path: (200, {}, answer, 0.0)) as receiver:
        server = gateway_server(webhooks=[crm(receiver)], secrets={"CRM_TOKEN": TOKEN})
        inputs = {"initial_context.tenant": "acme/east", "initial_context.name": "Ada", "call.duration": 42,
                  "call.from_number": "+15550001111"}
        result = admin(server, "POST", "/api/v1/subscriptions/crm/test", json={"inputs": inputs})
        assert result.status_code == 200, result.text
        body = result.json()
        [sent] = receiver.requests
        assert sent["path"] == "/hooks/acme/east"  # the receiver decodes the one segment acme%2Feast
        assert sent["headers"]["authorization"] == f"Bearer {TOKEN}" and sent["headers"]["x-caller"] == "+15550001111"
        assert json.loads(sent["body"]) == {"run": "sample-run", "who": "Ada", "seconds": 42}
        Webhook(WHSEC).verify(sent["body"], {k: v for k, v in sent["headers"].items() if k.startswith("webhook-")})
        assert body["request"]["method"] == "POST" and body["request"]["url"].endswith("/hooks/acme%2Feast")
        assert json.loads(body["request"]["body"]) == {"run": "sample-run", "who": "Ada", "seconds": 42}
        assert body["request"]["headers"]["Authorization"] == "[redacted]"
        assert body["response"]["status"] == 200 and body["verdict"] == {"outcome": "success", "success": True}
        assert body["mapped"] == {"tier": "gold", "crm_status_code": 200, "crm_action_success": True}
        assert TOKEN not in result.text and WHSEC not in result.text
        assert admin(server, "GET", "/api/v1/deliveries").json()["deliveries"] == []  # nothing recorded


def test_send_shows_a_failure_verdict_and_the_envelope_body(gateway_server):
    with Receiver(lambda n, path: (503, {}, b'{"error": "down"}', 0.0)) as receiver:
        server = gateway_server(webhooks=[crm(receiver, payload_template=None, url=receiver.url + "/x")],
                                secrets={"CRM_TOKEN": TOKEN})
        body = admin(server, "POST", "/api/v1/subscriptions/crm/test", json={"event": "call.busy"}).json()
        assert body["event"] == "call.busy" and json.loads(body["request"]["body"])["type"] == "call.busy"
        assert body["response"]["status"] == 503 and body["verdict"] == {"outcome": "retry", "success": False}
        assert body["mapped"]["crm_action_success"] is False
        assert len(receiver.requests) == 1


def test_send_for_a_stored_call_and_the_ssrf_guard(gateway_server):
    with Receiver() as receiver:
        server = gateway_server(webhooks=[crm(receiver, allow_networks=[])], secrets={"CRM_TOKEN": TOKEN})
        twilio_status_callback(server, "run-t", "ringing")
        wait_until(lambda: admin(server, "GET", "/api/v1/calls/run-t").status_code == 200)
        body = admin(server, "POST", "/api/v1/subscriptions/crm/test", json={"run": "run-t"}).json()
        assert body["response"]["status"] is None and "refused" in body["response"]["error"].lower()
        assert body["verdict"]["success"] is False and receiver.requests == []
        assert json.loads(body["request"]["body"])["run"] == "run-t"


def test_bad_requests_name_what_is_wrong(gateway_server):
    with Receiver() as receiver:
        server = gateway_server(webhooks=[crm(receiver)], secrets={"CRM_TOKEN": TOKEN})
        cases = [
            ({"inputs": []}, 400, "inputs must be an object"),
            ({"inputs": {"secret.CRM_TOKEN": "x"}}, 400, "inputs.secret.CRM_TOKEN: not a template context path"),
            ({"event": "DROP TABLE"}, 400, "event must be an event name"),
            ({"nope": 1}, 400, "nope: unknown field"),
            ({"run": "missing"}, 404, "no call with workflow_run_id 'missing'"),
        ]
        for payload, status, detail in cases:
            answer = admin(server, "POST", "/api/v1/subscriptions/crm/test", json=payload)
            assert answer.status_code == status and detail in answer.json()["detail"], (payload, answer.text)
        assert admin(server, "POST", "/api/v1/subscriptions/other/test", json={}).status_code == 404
        assert httpx.post(server.url + "/api/v1/subscriptions/crm/test", json={}).status_code == 401
        assert receiver.requests == []


def test_a_missing_secret_is_a_clear_422(gateway_server):
    with Receiver() as receiver:
        server = gateway_server(webhooks=[crm(receiver, auth={"type": "bearer_token", "token": "{{secret.CRM_TOKEN}}"})],
                                secrets={"CRM_TOKEN": TOKEN})
        ctx = server.app.state.gateway
        ctx.config = ctx.config.model_copy(update={"secrets": {}})
        answer = admin(server, "POST", "/api/v1/subscriptions/crm/test", json={})
        assert answer.status_code == 422 and "CRM_TOKEN" in answer.json()["detail"]


def test_payload_defaults_are_templates_too():
    """Their placeholders are inputs of a test send, their secrets are checked at start-up, and
    an attempt loads the call for them even when the template itself is static."""
    from gateway.webhooks.attempts import uses_template_context
    from gateway.webhooks.subscription import Subscription

    sub = Subscription(name="d", events=["call.ended"], url="https://x.example/h", payload_template={"static": True},
                       payload_defaults={"disposition": "{{gathered_context.call_disposition}}", "key": "{{secret.K}}"})
    assert sub.inputs() == ["gathered_context.call_disposition"]
    assert sub.secret_names() == {"K"}
    assert uses_template_context(sub)
