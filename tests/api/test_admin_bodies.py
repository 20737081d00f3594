"""Admin API bodies and cursors are read under the provider routes' limits: a clear 400/413,
never a RecursionError that resets the connection, never an unbounded read."""

from __future__ import annotations

import base64

import httpx

from support import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def test_deeply_nested_json_is_a_400_on_every_admin_body(gateway_server):
    server = gateway_server(webhooks=[{"name": "crm", "events": ["call.*"], "url": "https://crm.example.com/x"}])
    for path in ("/api/v1/calls", "/api/v1/deliveries/replay"):
        listed = httpx.post(server.url + path, content=b"[1]", headers=AUTH, timeout=10)
        assert listed.status_code == 400 and "object" in listed.json()["detail"], (path, listed.text)
        deep = httpx.post(server.url + path, content=b'{"a":' + b"[" * 20_000 + b"]" * 20_000 + b"}", headers=AUTH, timeout=10)
        assert deep.status_code == 400 and "nested too deeply" in deep.json()["detail"], (path, deep.text)
    assert httpx.get(server.url + "/healthz").status_code == 200  # the server is still there


def test_replay_reads_a_bounded_body(gateway_server):
    server = gateway_server(webhooks=[{"name": "crm", "events": ["call.*"], "url": "https://crm.example.com/x"}])
    big = b'{"subscription":"crm","pad":"' + b"x" * (2 << 20) + b'"}'
    answer = httpx.post(server.url + "/api/v1/deliveries/replay", content=big, headers=AUTH, timeout=30)
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]
    ok = httpx.post(server.url + "/api/v1/deliveries/replay", json={"subscription": "crm", "since": "2026-01-01T00:00:00Z"},
                    headers={"Authorization": AUTH["Authorization"]}, timeout=10)
    assert ok.status_code == 202 and ok.json() == {"subscription": "crm", "queued": 0}


def test_a_hostile_cursor_is_a_400(gateway_server):
    server = gateway_server()
    nested = base64.urlsafe_b64encode(b"[" * 30_000).decode().rstrip("=")
    short_nested = base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode().rstrip("=")
    for path in ("/api/v1/calls", "/api/v1/deliveries"):
        for cursor in (nested, short_nested):
            answer = httpx.get(server.url + path, params={"cursor": cursor}, headers=AUTH, timeout=10)
            assert answer.status_code == 400 and "cursor" in answer.json()["detail"], (path, answer.text)
