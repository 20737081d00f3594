"""The delivery engine end to end: signed status callbacks in, signed webhooks out to real
receivers on loopback, with retries, ordering, endpoint health and crash recovery."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
from standardwebhooks import Webhook

from support import API_KEY, Receiver, base_config, twilio_status_callback, wait_until

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = {"schedule": [0.05, 0.05, 0.05, 0.05], "jitter": 0.0, "total_timeout": 60}


def subscription(receiver, **overrides):
    sub = {
        "name": "crm",
        "events": ["call.*"],
        "url": receiver.url + "/hooks/{{workflow_run_id}}",
        "signing": {"scheme": "standard", "secrets": [WHSEC]},
        "retry": FAST,
        "timeout": 5,
        "allow_networks": ["127.0.0.0/8"],
    }
    sub.update(overrides)
    return sub


callback = twilio_status_callback


def admin(server, method, path, **kw):
    return httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {API_KEY}"}, **kw)




def test_events_are_delivered_signed_in_order(gateway_server):
    with Receiver() as receiver:
        server = gateway_server(webhooks=[subscription(receiver)])
        for status in ["initiated", "ringing", "in-progress", "completed"]:
            callback(server, "run-a", status)
        requests = receiver.wait_for(5)
        verifier = Webhook(WHSEC)
        types = []
        for request in requests:
            payload = verifier.verify(request["body"], request["headers"])  # raises unless signed correctly
            types.append(payload["type"])
            assert request["path"] == "/hooks/run-a"
            assert request["headers"]["webhook-id"].startswith("msg_")
        assert types == ["call.initiated", "call.ringing", "call.answered", "call.completed", "call.ended"]
        ended = json.loads(requests[-1]["body"])
        assert ended["data"]["state"] == "completed" and ended["data"]["workflow_run_id"] == "run-a"
        assert len({r["headers"]["webhook-id"] for r in requests}) == 5


def test_500_500_200_gets_the_same_webhook_id_with_fresh_timestamps(gateway_server):
    script = lambda n, path: (500 if n < 2 else 200, {}, b"{}", 0.0)  # noqa: E731
    with Receiver(script) as receiver:
        server = gateway_server(webhooks=[subscription(receiver, events=["call.ringing"], retry={**FAST, "schedule": [1.0, 1.0]})])
        callback(server, "run-b", "ringing")
        requests = receiver.wait_for(3, timeout=15)
        ids = {r["headers"]["webhook-id"] for r in requests}
        assert len(ids) == 1
        stamps = [int(r["headers"]["webhook-timestamp"]) for r in requests]
        assert stamps[2] > stamps[0]  # re-signed on every attempt
        for request in requests:
            Webhook(WHSEC).verify(request["body"], request["headers"])
        delivery_id = ids.pop()
        detail = wait_until(lambda: (d := admin(server, "GET", f"/api/v1/deliveries/{delivery_id}").json())["status"] == "succeeded" and d)
        assert [a["status"] for a in detail["attempts"]] == [500, 500, 200]
        assert detail["attempts"][0]["outcome"] == "retry"


def test_non_retryable_4xx_fails_at_once_and_dead_after_schedule(gateway_server):
    def script(n, path):
        return (400, {}, b'{"error":"bad"}', 0.0) if "bad" in path else (503, {}, b"{}", 0.0)

    with Receiver(script) as receiver:
        server = gateway_server(webhooks=[
            subscription(receiver, name="bad", url=receiver.url + "/bad", events=["call.ringing"]),
            subscription(receiver, name="down", url=receiver.url + "/down", events=["call.ringing"]),
        ])
        callback(server, "run-c", "ringing")
        wait_until(lambda: admin(server, "GET", "/api/v1/deliveries?subscription=bad&status=failed").json()["deliveries"])
        dead = wait_until(lambda: admin(server, "GET", "/api/v1/deliveries?subscription=down&status=dead").json()["deliveries"])
        assert dead[0]["attempts"] == 5  # the first try and four retries
        assert len([r for r in receiver.requests if r["path"] == "/bad"]) == 1


def test_retry_after_is_honoured(gateway_server):
    script = lambda n, path: ((503, {"Retry-After": "2"}, b"{}", 0.0) if n == 0 else (200, {}, b"{}", 0.0))  # noqa: E731
    with Receiver(script) as receiver:
        server = gateway_server(webhooks=[subscription(receiver, events=["call.ringing"])])
        callback(server, "run-d", "ringing")
        requests = receiver.wait_for(2, timeout=10)
        assert requests[1]["at"] - requests[0]["at"] >= 1.9


def test_429_waits_at_least_a_minute(gateway_server):
    with Receiver(lambda n, path: (429, {}, b"{}", 0.0)) as receiver:
        server = gateway_server(webhooks=[subscription(receiver, events=["call.ringing"])])
        callback(server, "run-e", "ringing")
        receiver.wait_for(1)
        row = wait_until(lambda: (d := admin(server, "GET", "/api/v1/deliveries?subscription=crm").json()["deliveries"]) and d[0]["attempts"] == 1 and d[0])
        first = row["last_attempt_at"].replace("Z", "+00:00")
        from datetime import datetime

        delay = (datetime.fromisoformat(row["next_attempt_at"].replace("Z", "+00:00")) - datetime.fromisoformat(first)).total_seconds()
        assert delay >= 60


def test_timeout_is_retried(gateway_server):
    script = lambda n, path: (200, {}, b"{}", 3.0 if n == 0 else 0.0)  # noqa: E731
    with Receiver(script) as receiver:
        server = gateway_server(webhooks=[subscription(receiver, events=["call.ringing"], timeout=0.5)])
        callback(server, "run-f", "ringing")
        receiver.wait_for(2, timeout=10)
        detail = wait_until(lambda: (rows := admin(server, "GET", "/api/v1/deliveries?status=succeeded").json()["deliveries"]) and rows[0])
        attempts = admin(server, "GET", f"/api/v1/deliveries/{detail['id']}").json()["attempts"]
        assert attempts[0]["status"] is None and "Timeout" in attempts[0]["error"]


def test_410_disables_the_subscription_until_enabled(gateway_server):
    gone = {"on": True}
    with Receiver(lambda n, path: (410 if gone["on"] else 200, {}, b"{}", 0.0)) as receiver:
        server = gateway_server(webhooks=[subscription(receiver, events=["call.*", "webhook.*"])])
        callback(server, "run-g", "ringing")
        receiver.wait_for(1)
        subs = wait_until(lambda: (s := admin(server, "GET", "/api/v1/subscriptions").json()["subscriptions"])[0]["health"]["disabled_at"] and s)
        assert "410" in subs[0]["health"]["disabled_reason"]
        callback(server, "run-g", "completed")
        time.sleep(0.5)
        assert len(receiver.requests) == 1  # nothing sent while disabled
        pending = admin(server, "GET", "/api/v1/deliveries?status=pending").json()["deliveries"]
        assert {d["event_type"] for d in pending} >= {"call.completed", "call.ended", "webhook.endpoint_disabled"}
        gone["on"] = False
        assert admin(server, "POST", "/api/v1/subscriptions/crm/enable").status_code == 200
        receiver.wait_for(4)
        types = [b["type"] for b in receiver.bodies()[1:]]
        assert set(types) == {"call.completed", "call.ended", "webhook.endpoint_disabled"}
        assert types.index("call.completed") < types.index("call.ended")


def test_consecutive_failures_disable_the_endpoint(gateway_server):
    with Receiver(lambda n, path: (500, {}, b"{}", 0.0)) as receiver:
        server = gateway_server(
            webhooks=[subscription(receiver, events=["call.ringing"], ordered=False, retry={**FAST, "schedule": [0.05] * 10})],
            delivery={"disable_after_failures": 5, "disable_after_seconds": 0},
        )
        callback(server, "run-h", "ringing")
        subs = wait_until(lambda: (s := admin(server, "GET", "/api/v1/subscriptions").json()["subscriptions"])[0]["health"]["disabled_at"] and s)
        assert "5 consecutive failed attempts" in subs[0]["health"]["disabled_reason"]
        events = wait_until(lambda: [e for e in _events(server) if e == "webhook.endpoint_disabled"])
        assert events == ["webhook.endpoint_disabled"]


def _events(server):
    import asyncio

    async def fetch():
        return [e.type for e in await server.app.state.gateway.store.list_events(limit=500)]

    return asyncio.run(fetch())


def test_order_per_call_holds_under_retries(gateway_server):
    failures = {"left": 3}

    def script(n, path):
        if "run-slow" in path and failures["left"] > 0:
            failures["left"] -= 1
            return 500, {}, b"{}", 0.0
        return 200, {}, b"{}", 0.0

    with Receiver(script) as receiver:
        server = gateway_server(webhooks=[subscription(receiver)])
        for status in ["ringing", "in-progress", "completed"]:
            callback(server, "run-slow", status)
            callback(server, "run-fast", status)
        receiver.wait_for(3 + 4 + 4, timeout=15)
        delivered = [(r["path"], json.loads(r["body"])["type"]) for r in receiver.requests if r["path"] == "/hooks/run-slow"]
        # A failed attempt may repeat, but no event overtakes an earlier one of the same call.
        seen = []
        for _, kind in delivered:
            if not seen or seen[-1] != kind:
                seen.append(kind)
        assert seen == ["call.ringing", "call.answered", "call.completed", "call.ended"]
        fast = [json.loads(r["body"])["type"] for r in receiver.requests if r["path"] == "/hooks/run-fast"]
        assert fast == ["call.ringing", "call.answered", "call.completed", "call.ended"]


def test_response_mapping_feeds_gathered_context_and_later_templates(gateway_server):
    def script(n, path):
        return 200, {}, json.dumps({"data": {"tier": "gold"}}).encode(), 0.0

    with Receiver(script) as receiver:
        server = gateway_server(webhooks=[
            subscription(receiver, name="lookup", events=["call.ringing"], response_mapping={"customer_tier": "data.tier"}),
            subscription(receiver, name="report", events=["call.ended"], url=receiver.url + "/report?tier={{gathered_context.customer_tier}}",
                         payload_template={"run": "{{workflow_run_id}}", "tier": "{{gathered_context.customer_tier}}",
                                           "duration": "{{call.duration}}", "ok": "{{gathered_context.lookup_action_success}}"}),
        ])
        callback(server, "run-m", "ringing")
        wait_until(lambda: admin(server, "GET", "/api/v1/calls/run-m").json()["gathered_context"].get("customer_tier"))
        call = admin(server, "GET", "/api/v1/calls/run-m").json()
        assert call["gathered_context"] == {"customer_tier": "gold", "lookup_status_code": 200, "lookup_action_success": True}
        callback(server, "run-m", "completed", CallDuration="42")
        report = wait_until(lambda: [r for r in receiver.requests if r["path"] == "/report"])[0]
        assert report["query"] == "tier=gold"
        assert json.loads(report["body"]) == {"run": "run-m", "tier": "gold", "duration": 42, "ok": True}


def test_secrets_never_reach_attempt_records_or_the_api(gateway_server, caplog):
    token = "s3cr3t-bearer-token-value-123"
    with Receiver(lambda n, path: (200, {}, json.dumps({"echo": token}).encode(), 0.0)) as receiver:
        server = gateway_server(
            webhooks=[subscription(receiver, events=["call.ringing"], auth={"type": "bearer_token", "token": "{{secret.CRM_TOKEN}}"},
                                   headers={"X-Key": "{{secret.CRM_TOKEN}}"})],
            secrets={"CRM_TOKEN": token},
        )
        callback(server, "run-s", "ringing")
        request = receiver.wait_for(1)[0]
        assert request["headers"]["authorization"] == f"Bearer {token}"
        row = wait_until(lambda: admin(server, "GET", "/api/v1/deliveries?status=succeeded").json()["deliveries"])[0]
        detail = admin(server, "GET", f"/api/v1/deliveries/{row['id']}").text
        subs = admin(server, "GET", "/api/v1/subscriptions").text
        assert token not in detail and token not in subs and WHSEC not in subs
        assert "[redacted]" in detail
    assert token not in caplog.text


def test_ssrf_guard_refuses_loopback_without_allow_networks(gateway_server):
    """A host known only when the request is made (here from a template) is vetted then; a
    literal one is refused when the configuration loads (tests/test_config_truths.py)."""
    with Receiver() as receiver:
        templated = "http://{{initial_context.host | '127.0.0.1'}}:" + receiver.url.rsplit(":", 1)[1] + "/hooks"
        server = gateway_server(webhooks=[subscription(receiver, events=["call.ringing"], url=templated, allow_networks=[])])
        callback(server, "run-x", "ringing")
        row = wait_until(lambda: admin(server, "GET", "/api/v1/deliveries?status=failed").json()["deliveries"])[0]
        detail = admin(server, "GET", f"/api/v1/deliveries/{row['id']}").json()
        assert "127.0.0.1" in detail["attempts"][0]["error"] and "refused" in detail["attempts"][0]["error"].lower()
        assert receiver.requests == []


def test_retry_and_replay_through_the_api(gateway_server):
    with Receiver(lambda n, path: (400 if n == 0 else 200, {}, b"{}", 0.0)) as receiver:
        server = gateway_server(webhooks=[subscription(receiver, events=["call.ringing"])])
        callback(server, "run-r", "ringing")
        failed = wait_until(lambda: admin(server, "GET", "/api/v1/deliveries?status=failed").json()["deliveries"])[0]
        assert admin(server, "POST", f"/api/v1/deliveries/{failed['id']}/retry").status_code == 202
        wait_until(lambda: admin(server, "GET", "/api/v1/deliveries?status=succeeded").json()["deliveries"])
        assert receiver.requests[1]["headers"]["webhook-id"] == failed["id"]
        replay = admin(server, "POST", "/api/v1/deliveries/replay",
                       json={"subscription": "crm", "since": "2000-01-01T00:00:00Z"})
        assert replay.status_code == 202 and replay.json()["queued"] == 1
        receiver.wait_for(3)
        assert receiver.requests[2]["headers"]["webhook-id"] == failed["id"]
        assert admin(server, "POST", "/api/v1/deliveries/replay", json={"subscription": "nope", "since": "2000-01-01T00:00:00Z"}).status_code == 400
        assert admin(server, "GET", "/api/v1/deliveries?status=weird").status_code == 400
        assert admin(server, "GET", "/api/v1/deliveries/msg_nope").status_code == 404
        assert httpx.get(server.url + "/api/v1/deliveries").status_code == 401


def test_kill_9_mid_delivery_then_restart_delivers_everything(gateway_process, tmp_path):
    slow = {"delay": 3.0}
    with Receiver(lambda n, path: (200, {}, b"{}", slow["delay"])) as receiver:
        config = base_config(tmp_path, webhooks=[subscription(receiver, timeout=4)],
                             delivery={"lease_seconds": 14})  # the shortest the timeout allows: the killed leases end soon
        proc = gateway_process(config)
        runs = [f"run-k{i}" for i in range(5)]
        for run in runs:
            for status in ["ringing", "completed"]:
                callback(proc, run, status)
        time.sleep(0.5)  # first attempts are in flight at the slow receiver
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        slow["delay"] = 0.0
        proc.start()
        expected = {(run, kind) for run in runs for kind in ("call.ringing", "call.completed", "call.ended")}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = {(json.loads(r["body"])["workflow_run_id"], json.loads(r["body"])["type"]) for r in receiver.requests}
            if got >= expected:
                break
            time.sleep(0.1)
        assert got >= expected
        for run in runs:  # per call, in order (a repeat after the crash may appear)
            kinds = [json.loads(r["body"])["type"] for r in receiver.requests if r["path"] == f"/hooks/{run}"]
            deduped = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
            assert deduped == ["call.ringing", "call.completed", "call.ended"]


@pytest.mark.parametrize("bad", [
    {"name": "Bad Name"},
    {"events": []},
    {"method": "TRACE"},
    {"retry": {"schedule": [-1]}},
    {"auth": {"type": "bearer_token", "token": "{{secret.MISSING}}"}},
])
def test_bad_subscription_config_stops_startup(tmp_path, bad):
    from gateway.config import ConfigError, parse_config

    sub = {"name": "crm", "events": ["call.*"], "url": "https://example.com/x", **bad}
    with pytest.raises(ConfigError, match=r"webhooks\[0\]"):
        parse_config(base_config(tmp_path, webhooks=[sub]), env={})


def test_dograh_workflow_webhook_nodes_deliver_call_ended(gateway_server, tmp_path):
    workflow = {"nodes": [
        {"id": "1", "type": "startCall", "data": {"name": "Start"}},
        {"id": "2", "type": "webhook", "data": {
            "name": "Notify CRM", "enabled": True, "http_method": "POST",
            "endpoint_url": "RECEIVER/dograh/{{workflow_run_id}}",
            "payload_template": {"run": "{{workflow_run_id}}", "outcome": "{{gathered_context.resolution | default('none')}}",
                                 "duration": "{{call.duration}}"},
            "custom_headers": [{"key": "X-Source", "value": "gateway"}],
            "credential_uuid": "cred-1"}},
    ]}
    with Receiver() as receiver:
        path = tmp_path / "workflow.json"
        path.write_text(json.dumps(workflow).replace("RECEIVER", receiver.url))
        server = gateway_server(workflows=[{
            "path": str(path), "allow_networks": ["127.0.0.0/8"],
            "credentials": {"cred-1": {"credential_type": "bearer_token", "credential_data": {"token": "dograh-token"}}},
        }])
        callback(server, "run-dg", "ringing")
        callback(server, "run-dg", "completed", CallDuration="17")
        request = receiver.wait_for(1)[0]
        assert request["path"] == "/dograh/run-dg"
        assert json.loads(request["body"]) == {"run": "run-dg", "outcome": "none", "duration": 17,
                                               "call_disposition": "completed"}  # Dograh adds it when unset
        assert request["headers"]["x-source"] == "gateway" and request["headers"]["authorization"] == "Bearer dograh-token"
        time.sleep(0.3)
        assert len(receiver.requests) == 1  # only call.ended
