"""`GET /api/v1/calls/{workflow_run_id}/events`: a call's events in order, paged, on every store."""

from __future__ import annotations

import httpx

from support import API_KEY, twilio_status_callback, wait_until


def admin(server, path):
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=20)


def test_a_calls_events_in_order_and_paged(gateway_server, store_config):
    server = gateway_server(**store_config)
    for status in ("ringing", "in-progress", "completed"):
        twilio_status_callback(server, "run-ev", status, CallDuration="4")
    twilio_status_callback(server, "run-other", "ringing")
    events = wait_until(lambda: (e := admin(server, "/api/v1/calls/run-ev/events").json())["events"] and e)
    types = [event["type"] for event in events["events"]]
    assert types == ["call.ringing", "call.answered", "call.completed", "call.ended"]
    assert events["next_after"] is None
    assert all(event["workflow_run_id"] == "run-ev" for event in events["events"])
    seqs = [event["seq"] for event in events["events"]]
    assert seqs == sorted(seqs)
    ended = events["events"][-1]
    assert ended["data"]["state"] == "completed" and ended["id"].startswith("evt_")
    first = admin(server, "/api/v1/calls/run-ev/events?limit=2").json()
    assert [e["type"] for e in first["events"]] == types[:2] and first["next_after"] == seqs[1]
    rest = admin(server, f"/api/v1/calls/run-ev/events?after={first['next_after']}").json()
    assert [e["type"] for e in rest["events"]] == types[2:]


def test_bad_paging_and_unknown_calls(gateway_server):
    server = gateway_server()
    twilio_status_callback(server, "run-ev", "ringing")
    assert admin(server, "/api/v1/calls/nope/events").status_code == 404
    for query, detail in (("limit=0", "limit must be"), ("limit=x", "limit must be"), ("after=-1", "after must be"),
                          ("after=9999999999999999999", "after must be")):
        answer = admin(server, f"/api/v1/calls/run-ev/events?{query}")
        assert answer.status_code == 400 and detail in answer.json()["detail"], query
    assert httpx.get(server.url + "/api/v1/calls/run-ev/events").status_code == 401
