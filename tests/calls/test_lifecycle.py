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


# -- the field rules (the table in gateway.calls.lifecycle's docstring) --------------------------

UNANSWERED_ENDS = [CallState.BUSY, CallState.NO_ANSWER, CallState.FAILED, CallState.CANCELED]


@pytest.mark.parametrize("end", UNANSWERED_ENDS)
def test_a_call_never_answered_has_no_answered_at_and_no_duration(end):
    """Whatever ring time the provider reports (Vonage's `duration`, Twilio's CallDuration)."""
    record, _ = walk([CallState.INITIATED, CallState.RINGING])
    t = apply(record, update(end, duration=25, occurred_at=NOW + timedelta(seconds=40)), NOW + timedelta(seconds=90))
    assert t.record.answered_at is None and t.record.duration == 0
    assert t.record.ended_at == NOW + timedelta(seconds=40)
    created = apply(None, update(end, duration=25)).record  # a first callback that is already the end
    assert created.answered_at is None and created.duration == 0


def test_completed_without_an_answered_callback_was_answered_for_its_duration():
    record, _ = walk([CallState.INITIATED, CallState.RINGING])
    t = apply(record, update(CallState.COMPLETED, duration=30, occurred_at=NOW + timedelta(seconds=50)))
    assert t.record.answered_at == NOW + timedelta(seconds=20) and t.record.duration == 30
    unknown = apply(record, update(CallState.COMPLETED)).record  # no duration given: nothing to say when
    assert unknown.answered_at is None and unknown.duration == 0


def test_an_answered_call_that_fails_keeps_its_talk_time():
    record, _ = walk([CallState.INITIATED, CallState.ANSWERED])  # answered at NOW + 1 s
    t = apply(record, update(CallState.FAILED, occurred_at=NOW + timedelta(seconds=13)))
    assert t.record.answered_at == NOW + timedelta(seconds=1) and t.record.duration == 12
    t = apply(record, update(CallState.COMPLETED, duration=11, occurred_at=NOW + timedelta(seconds=13)))
    assert t.record.duration == 11  # the provider's count wins over the callbacks' times


def test_the_end_is_the_callbacks_time_not_when_it_was_processed():
    record, _ = walk([CallState.INITIATED, CallState.ANSWERED])
    t = apply(record, update(CallState.COMPLETED, occurred_at=NOW + timedelta(seconds=31)), NOW + timedelta(seconds=636))
    assert t.record.ended_at == NOW + timedelta(seconds=31) and t.record.duration == 30


def test_known_provider_fields_are_never_overwritten_by_later_callbacks():
    first = CallUpdate(provider="twilio", provider_call_id="CA1", raw_status="in-progress", state=CallState.ANSWERED,
                       from_number="+1555", to_number="+1666", direction="outbound", answered_by="human",
                       occurred_at=NOW)
    record = apply(None, first).record
    ended = apply(record, update(CallState.COMPLETED, duration=30, occurred_at=NOW + timedelta(seconds=30))).record
    known = {k: getattr(ended, k) for k in ("provider", "provider_call_id", "from_number", "to_number", "direction",
                                             "answered_by", "started_at", "answered_at", "ended_at", "duration")}
    later = [
        CallUpdate(provider="vonage", provider_call_id="CA2", raw_status="completed", state=CallState.COMPLETED,
                   from_number="+1999", to_number="+1888", direction="inbound", answered_by="machine_start",
                   duration=99, occurred_at=NOW + timedelta(seconds=99)),
        CallUpdate(provider="twilio", provider_call_id="CA1", raw_status="busy", state=CallState.BUSY, duration=0),
        CallUpdate(provider="twilio", provider_call_id="CA1", answered_by="machine_end_beep", voicemail=True),
    ]
    for other in later:
        after = apply(ended, other, NOW + timedelta(seconds=200)).record
        assert {k: getattr(after, k) for k in known} == known
        assert after.state == CallState.COMPLETED and after.voicemail is False
    # before the end too: an answered call's fields stay
    middle = apply(record, CallUpdate(provider="vonage", provider_call_id="CA2", from_number="+1999", direction="inbound",
                                      answered_by="machine_start")).record
    assert (middle.provider, middle.provider_call_id, middle.from_number, middle.direction, middle.answered_by) == (
        "twilio", "CA1", "+1555", "outbound", "human")
