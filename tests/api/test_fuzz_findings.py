"""Bodies the admin API must refuse with a 4xx naming the problem, found while building the
schemathesis run against its OpenAPI document: never a 500. (tests/api/test_admin_bodies.py
has the bounded reader's own tests.)"""

from __future__ import annotations

import httpx

from support import API_KEY

DEEP = "[" * 30000 + "]" * 30000  # under the 64 KiB body limit; deeper than json's recursion limit


def admin(server, method, path, **kw):
    headers = {"Authorization": f"Bearer {API_KEY}", **kw.pop("headers", {})}
    return httpx.request(method, server.url + path, headers=headers, timeout=20, **kw)


def crm():
    return {"name": "crm", "events": ["call.*"], "url": "http://127.0.0.1:9/x", "allow_networks": ["127.0.0.0/8"]}


def test_deeply_nested_json_is_a_400_on_the_other_json_routes(gateway_server):
    server = gateway_server(webhooks=[crm()])
    for path in ("/api/v1/subscriptions/crm/test", "/api/v1/calls/run-x/hangup", "/api/v1/campaigns"):
        answer = admin(server, "POST", path, content=DEEP, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, (path, answer.text)
        assert "nested too deeply" in answer.json()["detail"]


def test_replay_times_out_of_range_are_a_400(gateway_server):
    server = gateway_server(webhooks=[crm()])
    for body, field in (({"subscription": "crm", "since": "0001-01-01T00:00:00+14:00"}, "since"),
                        ({"subscription": "crm", "since": "2020-01-01T00:00:00Z", "until": "9999-12-31T23:59:59-14:00"}, "until")):
        answer = admin(server, "POST", "/api/v1/deliveries/replay", json=body)
        assert answer.status_code == 400 and f"{field} is out of range" in answer.json()["detail"], answer.text


def test_a_test_send_cannot_replace_the_event_envelope(gateway_server):
    server = gateway_server(webhooks=[crm()])
    answer = admin(server, "POST", "/api/v1/subscriptions/crm/test", json={"inputs": {"event": 5}})
    assert answer.status_code == 400 and "inputs.event" in answer.json()["detail"]
