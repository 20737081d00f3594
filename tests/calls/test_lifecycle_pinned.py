"""The lifecycle rules pinned: state ordering for every pair of states, terminal finality,
duplicates, disorder (sequence numbers), the exact events and outcomes, and what a first
callback creates. Three rules are deliberately NOT pinned here because they are being changed
on another branch: `answered_at` for calls never answered, provider fields not overwritten by
later callbacks, and the end time/duration used when reconciling (see docs/mutation.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gateway.calls import CallState, CallUpdate, decide_transition, normalize_status
from gateway.calls import events as ev
from gateway.calls.events import STATE_EVENT
from gateway.calls.record import CallRecord

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
LIVE = [CallState.INITIATED, CallState.RINGING, CallState.ANSWERED]
TERMINAL = sorted(s for s in CallState if s.terminal)


def update(state=None, **kw) -> CallUpdate:
    return CallUpdate(provider="twilio", provider_call_id="CA1", state=state, **kw)


def record_in(state: CallState, **kw) -> CallRecord:
    return CallRecord(workflow_run_id="run-1", provider="twilio", provider_call_id="CA1", state=state, **kw)


def test_rank_orders_initiated_ringing_answered_then_every_terminal():
    assert [s.rank for s in LIVE] == [0, 1, 2]
    assert {s.rank for s in TERMINAL} == {3}
    assert {s.terminal for s in LIVE} == {False} and {s.terminal for s in TERMINAL} == {True}


@pytest.mark.parametrize("before", LIVE)
@pytest.mark.parametrize("after", list(CallState))
def test_every_pair_of_states(before, after):
    t = decide_transition(record_in(before), update(after), run_id="run-1", now=NOW)
    if after.rank > before.rank:
        assert (t.outcome, t.record.state, t.changed) == ("applied", after, True)
        assert t.events == [STATE_EVENT[after]] + ([ev.CALL_ENDED] if after.terminal else [])
    else:
        assert (t.outcome, t.record.state, t.changed, t.events) == ("duplicate" if after == before else "late", before, False, [])


@pytest.mark.parametrize("terminal", TERMINAL)
def test_terminal_is_final_even_for_voicemail_and_informational_updates(terminal):
    start = record_in(terminal, ended_at=NOW, voicemail=False)
    t = decide_transition(start, update(None, voicemail=True, answered_by="machine_start"), run_id="run-1", now=NOW)
    assert (t.outcome, t.events, t.changed, t.record.state, t.record.voicemail) == ("informational", [], False, terminal, False)
    t = decide_transition(start, update(CallState.ANSWERED, sequence=99), run_id="run-1", now=NOW)
    assert (t.outcome, t.events, t.changed, t.record.last_sequence) == ("terminal", [], False, None)


def test_first_callback_creates_the_record():
    at = NOW - timedelta(seconds=5)
    t = decide_transition(None, update(CallState.RINGING, sequence=3, occurred_at=at), run_id="run-9", now=NOW)
    r = t.record
    assert (t.outcome, t.changed, t.events) == ("created", True, [ev.CALL_RINGING])
    assert (r.workflow_run_id, r.state, r.created_at, r.updated_at, r.started_at, r.last_sequence) == ("run-9", CallState.RINGING, NOW, NOW, at, 3)
    assert (r.provider, r.provider_call_id) == ("twilio", "CA1")


def test_first_callback_without_a_state_creates_an_initiated_call():
    t = decide_transition(None, update(None), run_id="run-9", now=NOW)
    assert (t.outcome, t.record.state, t.events, t.changed, t.record.started_at, t.record.last_sequence) == (
        "created", CallState.INITIATED, [ev.CALL_INITIATED], True, NOW, None)


def test_updated_at_moves_and_context_is_copied():
    start = record_in(CallState.RINGING, gathered_context={"a": 1}, updated_at=NOW - timedelta(hours=1))
    t = decide_transition(start, update(CallState.ANSWERED), run_id="run-1", now=NOW)
    assert t.record.updated_at == NOW
    t.record.gathered_context["b"] = 2
    assert start.gathered_context == {"a": 1} and start.state == CallState.RINGING


def test_sequence_numbers_order_callbacks_and_equal_is_stale():
    start = record_in(CallState.RINGING, last_sequence=5)
    for sequence, outcome, state in ((4, "late", CallState.RINGING), (5, "late", CallState.RINGING), (6, "applied", CallState.ANSWERED)):
        t = decide_transition(start, update(CallState.ANSWERED, sequence=sequence), run_id="run-1", now=NOW)
        assert (t.outcome, t.record.state) == (outcome, state), sequence
        assert t.record.last_sequence == max(5, sequence)
    t = decide_transition(start, update(None, sequence=9), run_id="run-1", now=NOW)
    assert (t.outcome, t.record.last_sequence, t.events, t.changed) == ("informational", 9, [], False)
    t = decide_transition(record_in(CallState.RINGING), update(CallState.ANSWERED, sequence=0), run_id="run-1", now=NOW)
    assert (t.outcome, t.record.last_sequence) == ("applied", 0)
    t = decide_transition(start, update(CallState.ANSWERED), run_id="run-1", now=NOW)  # no sequence: by rank alone
    assert (t.outcome, t.record.last_sequence) == ("applied", 5)


def test_events_in_order_state_voicemail_ended():
    t = decide_transition(record_in(CallState.ANSWERED), update(CallState.COMPLETED, voicemail=True, answered_by="machine_end_beep"),
                          run_id="run-1", now=NOW)
    assert t.events == [ev.CALL_COMPLETED, ev.CALL_VOICEMAIL_DETECTED, ev.CALL_ENDED]
    assert t.record.voicemail is True and t.record.answered_by == "machine_end_beep"
    created = decide_transition(None, update(CallState.FAILED, voicemail=True), run_id="run-1", now=NOW)
    assert created.events == [ev.CALL_FAILED, ev.CALL_VOICEMAIL_DETECTED, ev.CALL_ENDED]


def test_voicemail_is_detected_once_and_answered_by_kept():
    start = record_in(CallState.ANSWERED, voicemail=True, answered_by="machine_start")
    t = decide_transition(start, update(None, voicemail=True, answered_by="machine_end_beep"), run_id="run-1", now=NOW)
    assert (t.events, t.changed, t.record.answered_by) == ([], False, "machine_start")
    human = decide_transition(record_in(CallState.ANSWERED), update(None, voicemail=False, answered_by="human"), run_id="run-1", now=NOW)
    assert (human.events, human.changed, human.record.voicemail, human.record.answered_by) == ([], False, False, "human")


def test_late_voicemail_still_reported_on_a_live_call():
    t = decide_transition(record_in(CallState.ANSWERED), update(CallState.RINGING, voicemail=True), run_id="run-1", now=NOW)
    assert (t.outcome, t.events, t.changed) == ("late", [ev.CALL_VOICEMAIL_DETECTED], True)


def test_answered_at_is_stamped_once_when_answered():
    t = decide_transition(record_in(CallState.RINGING), update(CallState.ANSWERED, occurred_at=NOW - timedelta(seconds=3)),
                          run_id="run-1", now=NOW)
    assert t.record.answered_at == NOW - timedelta(seconds=3)
    t2 = decide_transition(None, update(CallState.ANSWERED), run_id="run-1", now=NOW)
    assert t2.record.answered_at == NOW


@pytest.mark.parametrize("word", [" Completed ", "COMPLETED", "completed\n"])
def test_status_words_are_trimmed_and_case_folded(word):
    assert normalize_status("twilio", word) == CallState.COMPLETED


def test_unknown_provider_has_no_states():
    assert normalize_status("plivo", "completed") is None
    assert normalize_status("twilio", "   ") is None
