"""LiveCalls: what a drain waits for (pure bookkeeping; the store's part is in test_operations)."""

from __future__ import annotations

from gateway.calls.live import LiveCalls
from gateway.calls.record import CallRecord
from gateway.calls.states import CallState


def _record(run_id: str, state: CallState) -> CallRecord:
    return CallRecord(workflow_run_id=run_id, workflow_id="wf", user_id="u", provider="twilio", state=state)


def test_a_call_is_live_from_its_first_update_until_one_ends_it():
    live = LiveCalls()
    live.note(_record("a", CallState.RINGING))
    live.note(_record("b", CallState.ANSWERED))
    live.note(_record("a", CallState.ANSWERED))
    assert live.runs() == ["a", "b"] and "a" in live
    live.note(_record("a", CallState.COMPLETED))
    live.note(_record("c", CallState.FAILED))  # ended at its first update: never live
    assert live.runs() == ["b"] and len(live) == 1


def test_the_oldest_calls_are_forgotten_past_the_cap():
    live = LiveCalls(max_calls=3)
    for run in "abcde":
        live.note(_record(run, CallState.RINGING))
    assert live.runs() == ["c", "d", "e"]
