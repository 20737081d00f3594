"""Whatever an endpoint answers is data: a real `gateway serve` (with and without delivery
processes) records the attempt and goes by the rules, however deep the JSON it is sent back."""

from __future__ import annotations

import json

import httpx
import pytest

from support import API_KEY, Receiver, base_config, twilio_status_callback, wait_until

DEEP = b"[" * 5000


def _admin(proc, path):
    return httpx.get(proc.url + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).json()


@pytest.mark.parametrize("processes", [0, 1])
def test_a_200_of_json_nested_5000_deep_is_one_attempt_and_the_next_event_follows(processes, gateway_process, tmp_path):
    with Receiver(lambda n, path: (200, {}, DEEP if n == 0 else b'{"tier": "gold"}', 0.0)) as receiver:
        hook = {"name": "crm", "events": ["call.ringing", "call.answered"], "url": receiver.url + "/hooks/{{workflow_run_id}}",
                "signing": {"scheme": "none"}, "allow_networks": ["127.0.0.0/8"], "timeout": 5, "ordered": True,
                "response_mapping": {"tier": "tier"}, "retry": {"schedule": [0.2, 0.2], "jitter": 0}}
        proc = gateway_process(base_config(tmp_path, webhooks=[hook], delivery={"processes": processes}))
        twilio_status_callback(proc, "run-deep", "ringing")
        twilio_status_callback(proc, "run-deep", "in-progress")
        # The ordered subscription's next event goes once the deep answer's attempt is recorded.
        wait_until(lambda: len(receiver.requests) >= 2, timeout=20, what="the next event after the deep answer")
        first = receiver.requests[0]["headers"]["webhook-id"]
        detail = wait_until(lambda: (d := _admin(proc, f"/api/v1/deliveries/{first}"))["status"] == "succeeded" and d,
                            what="the deep answer's delivery to be recorded")
        (attempt,) = detail["attempts"]  # one attempt, recorded: a 200 meets the success rule
        assert attempt["status"] == 200 and attempt["outcome"] == "success"
        assert "not parsed" in attempt["error"] and "deeper than" in attempt["error"]  # mapping had nothing to map
        assert [json.loads(r["body"])["type"] for r in receiver.requests] == ["call.ringing", "call.answered"]
        assert [r["headers"]["webhook-id"] for r in receiver.requests].count(first) == 1  # sent once, not again and again
        call = _admin(proc, "/api/v1/calls/run-deep")
        assert call["gathered_context"]["tier"] == "gold"  # the second answer mapped; the first one's had nothing
        assert proc.stop() == 0
