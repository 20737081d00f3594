"""The pure campaign rules: outcomes, retries, calling windows, pacing, quotas, statistics,
and the request shapes (JSON and CSV)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gateway.calls.record import CallRecord
from gateway.calls.states import CallState
from gateway.dial.payloads import batch_completed, batch_failed, call_completed, stamp
from gateway.dial.policy import Pacer, after_call, classify, next_opening, quota_reached, statistics, window_open
from gateway.dial.spec import CampaignOptions, RetryOptions, SpecError, Window, parse_campaign, parse_contacts_csv
from gateway.store.campaigns import Campaign, CampaignContact

UTC = timezone.utc


def record(state, **fields):
    return CallRecord(workflow_run_id="r1", state=state, **fields)


def campaign(**fields):
    now = datetime(2025, 11, 15, 14, 0, tzinfo=UTC)
    values = dict(id="cmp_1", workflow_id="wf", user_id="u", provider="twilio", from_number="+1", status="running",
                  options={}, origin="https://gw", total=10, created_at=now, updated_at=now)
    values.update(fields)
    return Campaign(**values)


def test_outcomes():
    assert classify(record(CallState.COMPLETED)) == "succeeded"
    assert classify(record(CallState.COMPLETED, voicemail=True)) == "voicemail"
    assert classify(record(CallState.BUSY)) == "busy"
    assert classify(record(CallState.NO_ANSWER)) == "no-answer"
    assert classify(record(CallState.FAILED)) == "failed"
    assert classify(record(CallState.CANCELED)) == "canceled"
    assert classify(record(CallState.FAILED, annotations={"dial_interrupted": True})) == "interrupted"


def test_retries_follow_the_options():
    retry = RetryOptions(on=["busy", "no_answer", "voicemail"], max=2, delay=30)
    assert retry.on == ["busy", "no-answer", "voicemail"]
    assert after_call("succeeded", 1, retry) == ("succeeded", None)
    assert after_call("busy", 1, retry) == ("retry", 30)
    assert after_call("no-answer", 2, retry) == ("retry", 30)
    assert after_call("no-answer", 3, retry) == ("failed", None)  # 1 call + 2 retries
    assert after_call("failed", 1, retry) == ("failed", None)
    assert after_call("interrupted", 1, RetryOptions(on=["failed"], max=5)) == ("failed", None)  # never redialed
    with pytest.raises(ValueError, match="not one of"):
        RetryOptions(on=["angry"])


def test_window_same_day_overnight_and_days():
    office = Window(start="09:00", end="17:00", timezone="America/New_York", days=[0, 1, 2, 3, 4])
    monday_10_ny = datetime(2025, 11, 17, 15, 0, tzinfo=UTC)  # 10:00 EST
    assert window_open(monday_10_ny, office)
    assert not window_open(monday_10_ny + timedelta(hours=8), office)  # 18:00
    assert not window_open(monday_10_ny - timedelta(days=1), office)  # Sunday
    assert next_opening(monday_10_ny + timedelta(hours=8), office) == datetime(2025, 11, 18, 14, 0, tzinfo=UTC)
    friday_evening = datetime(2025, 11, 21, 23, 0, tzinfo=UTC)
    assert next_opening(friday_evening, office) == datetime(2025, 11, 24, 14, 0, tzinfo=UTC)  # Monday 09:00
    night = Window(start="22:00", end="02:00", timezone="UTC", days=[4])  # Friday night into Saturday
    assert window_open(datetime(2025, 11, 21, 23, 0, tzinfo=UTC), night)
    assert window_open(datetime(2025, 11, 22, 1, 0, tzinfo=UTC), night)  # Saturday 01:00 belongs to Friday
    assert not window_open(datetime(2025, 11, 22, 3, 0, tzinfo=UTC), night)
    assert not window_open(datetime(2025, 11, 20, 23, 0, tzinfo=UTC), night)  # Thursday
    assert window_open(datetime(2025, 1, 1, tzinfo=UTC), None)
    with pytest.raises(ValueError, match="unknown time zone"):
        Window(start="09:00", end="17:00", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="HH:MM"):
        Window(start="9am", end="17:00")


def test_pacer_spaces_starts():
    pacer = Pacer(4.0)
    slots = pacer.slots(100.0, 1.0, 10)
    assert slots == [100.0, 100.25, 100.5, 100.75, 101.0]
    pacer.use(slots[:2])
    assert pacer.slots(100.1, 0.2, 10) == []
    assert pacer.slots(100.1, 0.45, 10) == [100.5]
    assert pacer.slots(100.1, 1.0, 1) == [100.5]
    pacer.use([])
    assert pacer.next_at == 100.5


def test_quota_and_statistics():
    options = CampaignOptions(max_calls=3, max_minutes=2)
    assert quota_reached(campaign(dialed=2), options) is None
    assert quota_reached(campaign(dialed=3), options) == "max_calls"
    assert quota_reached(campaign(dialed=1, minutes_used=2.5), options) == "max_minutes"
    done = campaign(total=1000, counts={"succeeded": 850, "failed": 150})
    assert statistics(done) == {"total": 1000, "processed": 1000, "succeeded": 850, "failed": 150,
                                "percentComplete": 100, "successRate": 85}
    partial = campaign(total=3, counts={"succeeded": 1, "pending": 2})
    assert statistics(partial)["percentComplete"] == 33.33 and statistics(partial)["successRate"] == 100
    assert statistics(campaign(total=3, counts={"pending": 3}))["successRate"] == 0


def test_dialgen_payload_shapes():
    started = datetime(2025, 11, 15, 14, 5, tzinfo=UTC)
    done = campaign(total=2, counts={"succeeded": 1, "failed": 1}, started_at=started,
                    completed_at=started + timedelta(hours=2))
    body = batch_completed(done)
    assert body == {"event": "batch.completed", "batchId": "cmp_1", "agentId": "wf", "userId": "u",
                    "statistics": {"total": 2, "processed": 2, "succeeded": 1, "failed": 1, "percentComplete": 100,
                                   "successRate": 50},
                    "timestamps": {"createdAt": "2025-11-15T14:00:00.000Z", "startedAt": "2025-11-15T14:05:00.000Z",
                                   "completedAt": "2025-11-15T16:05:00.000Z"}}
    failed = batch_failed(done, "Insufficient call minutes", "INSUFFICIENT_CREDITS", started)
    assert failed == {"event": "batch.failed", "batchId": "cmp_1", "agentId": "wf", "userId": "u",
                      "error": "Insufficient call minutes", "code": "INSUFFICIENT_CREDITS",
                      "timestamp": "2025-11-15T14:05:00.000Z"}
    call = record(CallState.COMPLETED, answered_at=started, ended_at=started + timedelta(seconds=180), duration=180,
                  provider="twilio", gathered_context={"summary": "booked", "intent": "SALES_INQUIRY"},
                  media={"recording_url": "https://gw/rec.wav"})
    contact = CampaignContact(campaign_id="cmp_1", position=4, phone="+1234567890", name="John Doe", attempts=1)
    per_call = call_completed(done, contact, call, "succeeded", [{"role": "user", "text": "hi", "at": stamp(started)}])
    assert per_call["success"] is True
    data = per_call["callData"]
    assert {k: data[k] for k in ("id", "contactId", "agentId", "batchId", "status", "startTime", "endTime", "duration",
                                 "phoneNumber", "contactName", "recordingUrl", "summary")} == {
        "id": "r1", "contactId": "cmp_1:4", "agentId": "wf", "batchId": "cmp_1", "status": "COMPLETED",
        "startTime": "2025-11-15T14:05:00.000Z", "endTime": "2025-11-15T14:08:00.000Z", "duration": 180,
        "phoneNumber": "+1234567890", "contactName": "John Doe", "recordingUrl": "https://gw/rec.wav",
        "summary": "booked"}
    assert data["metricJson"] == {"summary": "booked", "intent": "SALES_INQUIRY"} and data["transcription"][0]["text"] == "hi"
    busy = call_completed(done, contact, record(CallState.BUSY), "busy", [])
    assert busy["success"] is False and busy["callData"]["status"] == "BUSY"


def test_campaign_requests():
    spec = parse_campaign({"workflow_id": "wf", "user_id": "u", "contacts": [
        {"phone": "+1 415 555 0100", "name": "Ann"}, {"phone": "14155550100"}, {"phone": "+14155550101"}]})
    contacts, dropped = spec.unique_contacts()
    assert [c.phone for c in contacts] == ["+14155550100", "+14155550101"] and dropped == 1
    assert spec.options.concurrency == 1 and spec.options.calls_per_second == 1.0
    for data, expected in [
        ({"workflow_id": "wf", "user_id": "u", "contacts": []}, "at least one contact"),
        ({"workflow_id": "wf", "user_id": "u", "contacts": [{"phone": "12"}]}, "contacts[0].phone: must be an E.164"),
        ({"workflow_id": "wf", "user_id": "u", "contacts": [{"phone": "+14155550100"}],
          "options": {"concurrency": 0}}, "options.concurrency"),
        ({"workflow_id": "wf", "user_id": "u", "contacts": [{"phone": "+14155550100"}],
          "options": {"webhooks": {"onBatchComplete": "ftp://x"}}}, "options.webhooks.onBatchComplete"),
        ({"workflow_id": "wf", "user_id": "u", "contacts": [{"phone": "+14155550100"}],
          "options": {"retries": {}}}, "options.retries: unknown key"),
    ]:
        with pytest.raises(SpecError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            parse_campaign(data)


def test_contacts_from_csv():
    contacts = parse_contacts_csv('\ufeffPhone Number,Name,plan,context\n+14155550100,Ann,gold,"{""vip"": true}"\n'
                                  "\n14155550101,,silver,\n")
    assert [(c.phone, c.name, c.context) for c in contacts] == [
        ("+14155550100", "Ann", {"plan": "gold", "vip": True}), ("+14155550101", None, {"plan": "silver"})]
    with pytest.raises(ValueError, match="line 2: phone: must be an E.164"):
        parse_contacts_csv("phone\nnot-a-number\n")
    with pytest.raises(ValueError, match="no phone column"):
        parse_contacts_csv("name\nAnn\n")
    with pytest.raises(ValueError, match="context is not JSON"):
        parse_contacts_csv("phone,context\n+14155550100,{bad\n")
