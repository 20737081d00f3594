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


async def test_settle_forgets_calls_the_store_saw_end_and_marking_writes_a_timeline_entry(tmp_path):
    from gateway.calls.lifecycle import CallUpdate
    from gateway.store import open_store_for

    store = open_store_for(f"sqlite:///{tmp_path}/live.db")
    await store.open()
    live = LiveCalls()
    try:
        for run, sid in (("ended-elsewhere", "CA1"), ("still-live", "CA2")):
            applied = await store.apply_update(CallUpdate(provider="twilio", provider_call_id=sid, raw_status="in-progress",
                                                          state=CallState.ANSWERED), run_id=run)
            live.note(applied.record)
        # another instance (or a reconciliation) takes the ending: this process never sees it
        await store.apply_update(CallUpdate(provider="twilio", provider_call_id="CA1", raw_status="completed",
                                            state=CallState.COMPLETED), run_id="ended-elsewhere")
        await live.settle(store)
        assert live.runs() == ["still-live"]
        await live.mark_unfinished(store, drain_seconds=5)
        (entry,) = [e for e in await store.get_timeline("still-live") if e.kind == "shutdown.unfinished"]
        assert entry.source == "gateway" and entry.data["state"] == "answered"
    finally:
        await store.close()
