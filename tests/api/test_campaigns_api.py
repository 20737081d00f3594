"""Campaigns end to end: the real gateway on loopback dials through the real Twilio SDK to a
local stand-in of Twilio's REST API; signed status callbacks end the calls; real receivers
check the configured and inline (Dialgen-shaped) webhooks and their signatures."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import pytest
from standardwebhooks import Webhook

from dial.campaign_support import (
    FAST_RETRY,
    Network,
    api,
    campaign,
    create,
    dial_config,
    phones,
    to_number,
    wait_status,
    wait_until,
)
from dial.fakes import FakeTwilio
from support import Receiver

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def twilio():
    with FakeTwilio() as fake:
        yield fake


def observer(receiver, events=("campaign.*", "batch.*")):
    return {"name": "ops", "events": list(events), "url": receiver.url + "/events",
            "signing": {"scheme": "standard", "secrets": [WHSEC]}, "retry": FAST_RETRY, "timeout": 5,
            "allow_networks": ["127.0.0.0/8"]}


def verified(receiver, secret, path=None):
    """Every request (to `path`) verified with `secret` (raises unless signed correctly), parsed."""
    hook = Webhook(secret)
    return [hook.verify(r["body"], r["headers"]) for r in receiver.requests if path is None or r["path"] == path]


def test_campaign_dials_everyone_once_and_reports_like_dialgen(gateway_server, twilio, store_config):
    with Receiver() as inline, Receiver() as ops:
        server = gateway_server(**dial_config(twilio), **store_config, webhooks=[observer(ops)])
        numbers = phones(5)
        with Network(twilio):
            made = create(server.url, numbers, concurrency=2, calls_per_second=50, webhooks={
                "onBatchComplete": inline.url + "/batch-complete", "onCallComplete": inline.url + "/call-complete"})
            assert made["status"] == "running" and made["statistics"]["total"] == 5
            secret = made["webhook_secret"]
            assert secret.startswith("whsec_")
            done = wait_status(server.url, made["id"], "completed")
        assert sorted(to_number(e) for e in twilio.of("create")) == numbers  # everyone, once
        assert done["statistics"] == {"total": 5, "processed": 5, "succeeded": 5, "failed": 0,
                                      "percentComplete": 100, "successRate": 100}
        assert done["progress"]["calls_placed"] == 5 and done["progress"]["minutes_used"] == 2.5
        assert "webhook_secret" not in done
        inline.wait_for(6)
        per_call = verified(inline, secret, "/call-complete")
        assert len(per_call) == 5 and all(body["success"] is True for body in per_call)
        data = per_call[0]["callData"]
        assert data["batchId"] == made["id"] and data["agentId"] == "wf-c" and data["status"] == "COMPLETED"
        assert data["duration"] == 30 and data["phoneNumber"] in numbers and data["contactName"].startswith("Contact ")
        assert sorted(body["callData"]["phoneNumber"] for body in per_call) == numbers
        (batch,) = verified(inline, secret, "/batch-complete")
        assert batch["event"] == "batch.completed" and batch["batchId"] == made["id"] and batch["userId"] == "user-c"
        assert batch["statistics"] == done["statistics"]
        assert set(batch["timestamps"]) == {"createdAt", "startedAt", "completedAt"}
        assert batch["timestamps"]["completedAt"].endswith("Z")
        ops.wait_for(8)
        types = [body["type"] for body in verified(ops, WHSEC)]
        assert types.count("campaign.started") == 1 and types.count("campaign.completed") == 1
        assert types.count("batch.completed") == 1 and types.count("batch.call_completed") == 5
        completed = next(b for b in verified(ops, WHSEC) if b["type"] == "campaign.completed")
        assert completed["data"]["campaign"]["statistics"]["succeeded"] == 5
    # each call is a normal call of the gateway, with the campaign in its context
    run_id = data["id"]
    record = api(server.url, "GET", f"/api/v1/calls/{run_id}").json()
    assert record["direction"] == "outbound" and record["initial_context"]["campaign"]["id"] == made["id"]


def test_concurrency_is_never_exceeded(gateway_server, twilio):
    held: set[str] = set()
    server = gateway_server(**dial_config(twilio))
    with Network(twilio, hold=lambda entry: entry["sid"] not in held) as network:
        made = create(server.url, phones(7), concurrency=3, calls_per_second=100)
        for released in range(7):
            placed = wait_until(lambda: len(twilio.of("create")) >= min(7, released + 3) and twilio.of("create"))
            time.sleep(0.3)  # several runner ticks: room for a wrong extra call to show up
            assert len(twilio.of("create")) == min(7, released + 3), "more calls in progress than the concurrency"
            held.add(placed[released]["sid"])  # end one call
            wait_until(lambda: placed[released]["sid"] in network.done)
        wait_status(server.url, made["id"], "completed")
    assert len(twilio.of("create")) == 7


def test_calls_per_second_spaces_the_dials(gateway_server, twilio):
    server = gateway_server(**dial_config(twilio))
    with Network(twilio):
        made = create(server.url, phones(9), concurrency=20, calls_per_second=5)
        wait_status(server.url, made["id"], "completed")
    times = sorted(entry["at"] for entry in twilio.of("create"))
    assert len(times) == 9
    # 9 starts at 5 per second span 8 intervals of 0.2 s; a broken pacer sends them in one burst.
    # Bounds at half the schedule: a request held up on its way only makes the next gap shorter.
    assert times[-1] - times[0] >= 8 * 0.2 * 0.5
    for first, last in zip(times, times[5:]):  # no second holds many more than 5 starts
        assert last - first >= 5 * 0.2 * 0.5


def test_retries_follow_the_outcome(gateway_server, twilio, store_config):
    numbers = phones(4)
    voicemail = [("ringing", {}), ("in-progress", {}), ("", {"AnsweredBy": "machine_end_beep"}),  # async AMD result
                 ("await-hangup", {}), ("completed", {"CallDuration": "4"})]
    fates = {
        numbers[0]: {1: [("busy", {})], 2: Network.ANSWERED},                       # busy, then answered
        numbers[1]: {n: [("no-answer", {})] for n in (1, 2, 3)},                     # gives up after max
        numbers[2]: {1: [("failed", {})]},                                          # failed is not retried
        numbers[3]: {1: voicemail, 2: Network.ANSWERED},                              # voicemail, then a person
    }
    with Receiver() as inline:
        server = gateway_server(**dial_config(twilio), **store_config)
        with Network(twilio, fate=lambda entry, attempt: fates[to_number(entry)][attempt]):
            made = create(server.url, numbers, concurrency=4, calls_per_second=50, machine_detection=True,
                          retry={"on": ["busy", "no-answer", "voicemail"], "max": 2, "delay": 0.2},
                          webhooks={"onCallComplete": inline.url + "/call"})
            done = wait_status(server.url, made["id"], "completed")
        dialed = [to_number(e) for e in twilio.of("create")]
        assert {n: dialed.count(n) for n in numbers} == {numbers[0]: 2, numbers[1]: 3, numbers[2]: 1, numbers[3]: 2}
        assert twilio.of("create")[0]["body"]["MachineDetection"] == ["Enable"]
        assert done["statistics"] == {"total": 4, "processed": 4, "succeeded": 2, "failed": 2,
                                      "percentComplete": 100, "successRate": 50}
        contacts = api(server.url, "GET", f"/api/v1/campaigns/{made['id']}/contacts").json()["contacts"]
        assert [(c["status"], c["attempts"], c["outcome"]) for c in contacts] == [
            ("succeeded", 2, "succeeded"), ("failed", 3, "no-answer"), ("failed", 1, "failed"), ("succeeded", 2, "succeeded")]
        # the machine was hung up on through the REST API (answered: Status=completed), to call again later
        machine = next(e["sid"] for e in twilio.of("create") if to_number(e) == numbers[3])
        assert [u["body"]["Status"] for u in twilio.of("update") if u["params"]["sid"] == machine] == [["completed"]]
        inline.wait_for(8)
        statuses = sorted(json.loads(r["body"])["callData"]["status"] for r in inline.requests)
        assert statuses == sorted(["BUSY", "COMPLETED", "NO_ANSWER", "NO_ANSWER", "NO_ANSWER", "FAILED",
                                   "VOICEMAIL", "COMPLETED"])


def test_pause_resume_and_cancel(gateway_server, twilio, store_config):
    held: set[str] = set()
    with Receiver() as ops:
        server = gateway_server(**dial_config(twilio), **store_config, webhooks=[observer(ops, ["campaign.*"])])
        with Network(twilio, hold=lambda entry: entry["sid"] not in held) as network:
            made = create(server.url, phones(4), concurrency=1, calls_per_second=100)
            first = twilio.wait_for("create", 1)[0]
            paused = api(server.url, "POST", f"/api/v1/campaigns/{made['id']}/pause")
            assert paused.status_code == 200 and paused.json()["status"] == "paused"
            held.add(first["sid"])
            wait_until(lambda: first["sid"] in network.done)
            time.sleep(0.4)
            assert len(twilio.of("create")) == 1  # paused: the call in progress ended, no new one
            again = api(server.url, "POST", f"/api/v1/campaigns/{made['id']}/pause")
            assert again.status_code == 409 and "paused" in again.json()["detail"]
            assert api(server.url, "POST", f"/api/v1/campaigns/{made['id']}/resume").json()["status"] == "running"
            second = twilio.wait_for("create", 2)[1]
            canceled = api(server.url, "POST", f"/api/v1/campaigns/{made['id']}/cancel").json()
            assert canceled["status"] == "canceled" and canceled["progress"]["canceled"] == 2
            held.add(second["sid"])
            wait_until(lambda: campaign(server.url, made["id"])["progress"]["in_progress"] == 0)
        time.sleep(0.3)
        final = campaign(server.url, made["id"])
        assert len(twilio.of("create")) == 2 and final["status"] == "canceled"
        assert final["statistics"]["succeeded"] == 2 and final["statistics"]["total"] == 4
        assert api(server.url, "POST", f"/api/v1/campaigns/{made['id']}/resume").status_code == 409
        ops.wait_for(4)
        types = [json.loads(r["body"])["type"] for r in ops.requests]
        assert types.count("campaign.started") == 2 and "campaign.paused" in types and "campaign.canceled" in types
        resumed = [json.loads(r["body"]) for r in ops.requests if json.loads(r["body"])["type"] == "campaign.started"]
        assert [b["data"]["detail"]["resumed"] for b in resumed] == [False, True]


def test_nobody_is_called_outside_the_window(gateway_server, twilio):
    server = gateway_server(**dial_config(twilio))
    now = datetime.now(timezone.utc)
    start, end = (now + timedelta(hours=3)).strftime("%H:%M"), (now + timedelta(hours=4)).strftime("%H:%M")
    made = create(server.url, phones(2), window={"start": start, "end": end, "timezone": "UTC"})
    time.sleep(0.6)  # a dozen runner ticks
    assert twilio.of("create") == []
    assert campaign(server.url, made["id"])["progress"]["pending"] == 2
    open_now = {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": (now + timedelta(hours=1)).strftime("%H:%M"),
                "timezone": "UTC"}
    with Network(twilio):
        other = create(server.url, phones(1, start=900), window=open_now)
        wait_status(server.url, other["id"], "completed")
    assert [to_number(e) for e in twilio.of("create")] == phones(1, start=900)


def test_max_calls_stops_the_campaign_with_quota_reached(gateway_server, twilio, store_config):
    with Receiver() as inline, Receiver() as ops:
        server = gateway_server(**dial_config(twilio), **store_config, webhooks=[observer(ops, ["campaign.quota_reached"])])
        with Network(twilio):
            made = create(server.url, phones(5), concurrency=1, calls_per_second=100, max_calls=2,
                          webhooks={"onBatchComplete": inline.url + "/done"})
            done = wait_status(server.url, made["id"], "completed")
        assert len(twilio.of("create")) == 2
        assert done["quota_reached"] == "max_calls" and done["progress"]["skipped"] == 3
        assert done["statistics"]["processed"] == 2 and done["statistics"]["percentComplete"] == 40
        (hit,) = verified(ops.wait_for(1) and ops, WHSEC)
        assert hit["data"]["detail"] == {"quota": "max_calls", "used": 2, "limit": 2}
        (batch,) = verified(inline.wait_for(1) and inline, made["webhook_secret"])
        assert batch["stopReason"] == "quota_reached" and batch["quota"] == "max_calls"


def test_provider_refusing_credentials_fails_the_campaign(gateway_server):
    refuse = lambda kind, n, req: (401, {"code": 20003, "message": "Authenticate", "status": 401})  # noqa: E731
    with FakeTwilio(refuse) as twilio, Receiver() as inline, Receiver() as ops:
        server = gateway_server(**dial_config(twilio, webhook_secret=WHSEC), webhooks=[observer(ops, ["campaign.failed"])])
        made = create(server.url, phones(3), concurrency=1, calls_per_second=100,
                      webhooks={"onBatchFailed": inline.url + "/failed", "onCallComplete": inline.url + "/call"})
        assert "webhook_secret" not in made  # the configured secret signs them
        failed = wait_status(server.url, made["id"], "failed")
        assert failed["error"] == {"message": "twilio refused the gateway's credentials: Authenticate",
                                   "code": "PROVIDER_AUTH_FAILED"}
        assert len(twilio.of("create")) == 1
        wait_until(lambda: campaign(server.url, made["id"])["statistics"]["failed"] == 1)
        final = campaign(server.url, made["id"])
        assert final["progress"]["skipped"] == 2
        inline.wait_for(2)
        bodies = {r["path"]: body for r, body in zip(inline.requests, verified(inline, WHSEC))}
        assert bodies["/failed"] == {"event": "batch.failed", "batchId": made["id"], "agentId": "wf-c", "userId": "user-c",
                                     "error": failed["error"]["message"], "code": "PROVIDER_AUTH_FAILED",
                                     "timestamp": bodies["/failed"]["timestamp"]}
        assert bodies["/call"]["success"] is False and bodies["/call"]["callData"]["status"] == "FAILED"
        (event,) = verified(ops.wait_for(1) and ops, WHSEC)
        assert event["data"]["detail"]["code"] == "PROVIDER_AUTH_FAILED"


def test_contacts_from_a_csv_upload(gateway_server, twilio):
    server = gateway_server(**dial_config(twilio))
    csv_text = "phone,name,plan\n+14155550100,Ann,gold\n+14155550101,Bob,silver\n+14155550100,Ann again,gold\n"
    options = quote(json.dumps({"concurrency": 2, "calls_per_second": 50}))
    response = api(server.url, "POST", f"/api/v1/campaigns?workflow_id=wf-csv&user_id=u-csv&name=Spring&options={options}",
                   content=csv_text.encode(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["name"] == "Spring" and made["statistics"]["total"] == 2 and made["duplicates_dropped"] == 1
    assert made["options"]["concurrency"] == 2
    with Network(twilio):
        wait_status(server.url, made["id"], "completed")
    contacts = api(server.url, "GET", f"/api/v1/campaigns/{made['id']}/contacts").json()["contacts"]
    assert [(c["phone"], c["name"], c["context"]) for c in contacts] == [
        ("+14155550100", "Ann", {"plan": "gold"}), ("+14155550101", "Bob", {"plan": "silver"})]
    bad = api(server.url, "POST", "/api/v1/campaigns?workflow_id=w&user_id=u&colour=red", content=b"phone\n+14155550100\n",
              headers={"Content-Type": "text/csv"})
    assert bad.status_code == 400 and "colour: unknown query parameter" in bad.json()["detail"]
    broken = api(server.url, "POST", "/api/v1/campaigns?workflow_id=w&user_id=u", content=b"phone\nnope\n",
                 headers={"Content-Type": "text/csv"})
    assert broken.status_code == 400 and "line 2" in broken.json()["detail"]


def test_bad_campaign_requests(gateway_server, twilio):
    server = gateway_server(**dial_config(twilio))
    base = {"workflow_id": "wf", "user_id": "u", "contacts": [{"phone": "+14155550100"}]}
    for body, expected in [
        ({**base, "contacts": []}, "at least one contact"),
        ({**base, "options": {"retry": {"on": ["angry"]}}}, "options.retry.on"),
        ({**base, "options": {"window": {"start": "09:00", "end": "17:00", "timezone": "Nowhere/Land"}}},
         "unknown time zone"),
        ({**base, "options": {"webhooks": {"onCallComplete": "http://x/{{secret.A}}"}}}, "must not contain"),
        ({**base, "provider": "vonage"}, "application_id and private_key"),
        ({k: v for k, v in base.items() if k != "user_id"}, "user_id: required key is missing"),
    ]:
        response = api(server.url, "POST", "/api/v1/campaigns", json=body)
        assert response.status_code == 400 and expected in response.json()["detail"], (body, response.text)
    assert api(server.url, "GET", "/api/v1/campaigns/cmp_nope").status_code == 404
    assert api(server.url, "POST", "/api/v1/campaigns/cmp_nope/pause").status_code == 404
    assert httpx.get(server.url + "/api/v1/campaigns").status_code == 401
    assert api(server.url, "GET", "/api/v1/campaigns?status=bogus").status_code == 400
    listed = api(server.url, "GET", "/api/v1/campaigns").json()
    assert listed == {"campaigns": [], "next_cursor": None}
    assert twilio.of("create") == []
