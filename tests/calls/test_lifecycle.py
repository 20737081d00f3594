"""The transition rules: every mapping row, forward-only, terminal finality, events."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gateway.calls import PROVIDER_STATUS, CallState, CallUpdate, decide_transition, normalize_status
from gateway.calls import events as ev
from gateway.calls.record import CallRecord

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)

EXPECTED_ROWS = {
    ("twilio", "queued"): "initiated",
    ("twilio", "initiated"): "initiated",
    ("twilio", "ringing"): "ringing",
    ("twilio", "in-progress"): "answered",
    ("twilio", "completed"): "completed",
    ("twilio", "busy"): "busy",
    ("twilio", "no-answer"): "no-answer",
    ("twilio", "canceled"): "canceled",
    ("twilio", "failed"): "failed",
    ("vonage", "started"): "initiated",
    ("vonage", "ringing"): "ringing",
    ("vonage", "answered"): "answered",
    ("vonage", "completed"): "completed",
    ("vonage", "busy"): "busy",
    ("vonage", "rejected"): "busy",
    ("vonage", "timeout"): "no-answer",
    ("vonage", "unanswered"): "no-answer",
    ("vonage", "cancelled"): "canceled",
    ("vonage", "failed"): "failed",
    ("vonage-websocket", "completed"): "completed",
    ("vonage-websocket", "disconnected"): "completed",
    ("vonage-websocket", "failed"): "failed",
    ("vonage-websocket", "unanswered"): "failed",
    ("vonage-websocket", "rejected"): "failed",
    ("vonage-websocket", "timeout"): "failed",
    ("telnyx", "queued"): "initiated",
    ("telnyx", "initiated"): "initiated",
    ("telnyx", "ringing"): "ringing",
    ("telnyx", "in-progress"): "answered",
    ("telnyx", "answered"): "answered",
    ("telnyx", "completed"): "completed",
    ("telnyx", "busy"): "busy",
    ("telnyx", "no-answer"): "no-answer",
    ("telnyx", "canceled"): "canceled",
    ("telnyx", "failed"): "failed",
    ("plivo", "ringing"): "ringing",
    ("plivo", "in-progress"): "answered",
    ("plivo", "completed"): "completed",
    ("plivo", "busy"): "busy",
    ("plivo", "failed"): "failed",
    ("plivo", "timeout"): "no-answer",
    ("plivo", "no-answer"): "no-answer",
    ("plivo", "cancel"): "canceled",
    ("plivo", "canceled"): "canceled",
}


def test_mapping_table_is_exactly_the_documented_rows():
    table = {(p, raw): state.value for p, rows in PROVIDER_STATUS.items() for raw, state in rows.items()}
    assert table == EXPECTED_ROWS


@pytest.mark.parametrize(("provider", "raw"), sorted(EXPECTED_ROWS))
def test_every_row_normalizes(provider, raw):
    assert normalize_status(provider, raw).value == EXPECTED_ROWS[(provider, raw)]
    assert normalize_status(provider, raw.upper()).value == EXPECTED_ROWS[(provider, raw)]


@pytest.mark.parametrize("raw", [None, "", "record", "machine", "human", "disconnected", "transfer"])
def test_non_state_words_map_to_none(raw):
    assert normalize_status("vonage", raw) is None
    assert normalize_status("twilio", raw) is None


def update(state: CallState | None, **kw) -> CallUpdate:
    return CallUpdate(provider="twilio", provider_call_id="CA1", raw_status=state.value if state else None, state=state, **kw)


def apply(record, upd, at=NOW):
    return decide_transition(record, upd, run_id="run-1", now=at)


def test_new_call_created_from_first_callback_emits_its_state():
    t = apply(None, update(CallState.RINGING))
    assert t.outcome == "created"
    assert t.record.state == CallState.RINGING
    assert t.events == [ev.CALL_RINGING]
    assert t.record.workflow_run_id == "run-1"
    assert t.record.provider_call_id == "CA1"


def test_unknown_run_created_terminal_emits_state_and_ended():
    t = apply(None, update(CallState.COMPLETED, duration=42))
    assert t.events == [ev.CALL_COMPLETED, ev.CALL_ENDED]
    assert t.record.duration == 42
    assert t.record.ended_at == NOW


def walk(states, start=None):
    record, emitted = start, []
    for i, state in enumerate(states):
        t = apply(record, update(state), NOW + timedelta(seconds=i))
        record = t.record
        emitted.append(t.events)
    return record, emitted


def test_forward_walk_emits_one_event_per_state_and_ended_once():
    record, emitted = walk([CallState.INITIATED, CallState.RINGING, CallState.ANSWERED, CallState.COMPLETED])
    assert emitted == [[ev.CALL_INITIATED], [ev.CALL_RINGING], [ev.CALL_ANSWERED], [ev.CALL_COMPLETED, ev.CALL_ENDED]]
    assert record.answered_at == NOW + timedelta(seconds=2)
    assert record.ended_at == NOW + timedelta(seconds=3)
    assert record.duration == 1


def test_duplicates_and_late_arrivals_change_nothing():
    record, _ = walk([CallState.INITIATED, CallState.ANSWERED])
    for late in (CallState.INITIATED, CallState.RINGING):
        t = apply(record, update(late))
        assert t.outcome == "late" and t.events == [] and t.record.state == CallState.ANSWERED
    t = apply(record, update(CallState.ANSWERED))
    assert t.outcome == "duplicate" and t.events == []


@pytest.mark.parametrize("terminal", sorted(s for s in CallState if s.terminal))
@pytest.mark.parametrize("after", list(CallState))
def test_terminal_state_never_changes(terminal, after):
    record, _ = walk([CallState.INITIATED, terminal])
    t = apply(record, update(after))
    assert t.record.state == terminal
    assert t.events == []
    assert t.outcome == "terminal"


def test_sequence_number_orders_callbacks():
    record = apply(None, update(CallState.INITIATED, sequence=0)).record
    record = apply(record, update(CallState.ANSWERED, sequence=2)).record
    t = apply(record, update(CallState.RINGING, sequence=1))
    assert t.outcome == "late" and t.events == []
    # A repeated sequence number is a duplicate delivery even if the word differs.
    t = apply(record, update(CallState.COMPLETED, sequence=2))
    assert t.outcome == "late" and t.events == []
    t = apply(record, update(CallState.COMPLETED, sequence=3))
    assert t.events == [ev.CALL_COMPLETED, ev.CALL_ENDED]


def test_voicemail_detected_once_and_before_ended():
    record = apply(None, update(CallState.ANSWERED)).record
    t = apply(record, update(None, voicemail=True, answered_by="machine_start"))
    assert t.events == [ev.CALL_VOICEMAIL_DETECTED]
    assert t.record.voicemail and t.record.answered_by == "machine_start"
    t2 = apply(t.record, update(None, voicemail=True, answered_by="machine_end_beep"))
    assert t2.events == []
    fresh = apply(None, update(CallState.RINGING)).record
    t3 = apply(fresh, update(CallState.COMPLETED, voicemail=True, answered_by="machine_end_beep"))
    assert t3.events == [ev.CALL_COMPLETED, ev.CALL_VOICEMAIL_DETECTED, ev.CALL_ENDED]


def test_human_answer_is_not_voicemail():
    record = apply(None, update(CallState.ANSWERED, voicemail=False, answered_by="human")).record
    assert record.voicemail is False and record.answered_by == "human"


def test_blank_fields_fill_but_known_fields_stay():
    record = apply(None, CallUpdate(provider="twilio", provider_call_id="CA1", state=CallState.RINGING)).record
    t = apply(record, CallUpdate(provider="twilio", provider_call_id="CA1", state=CallState.RINGING, from_number="+1555", to_number="+1666"))
    assert t.record.from_number == "+1555"
    t2 = apply(t.record, CallUpdate(provider="twilio", provider_call_id="CA1", from_number="+1999"))
    assert t2.record.from_number == "+1555" and t2.outcome == "informational"


def test_input_record_is_not_mutated():
    record = CallRecord(workflow_run_id="run-1", state=CallState.RINGING, gathered_context={"a": 1})
    apply(record, update(CallState.ANSWERED))
    assert record.state == CallState.RINGING and record.answered_at is None
