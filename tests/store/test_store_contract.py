"""The `Store` contract: every backend must pass these."""

from __future__ import annotations

import asyncio

import pytest

from gateway.calls import CallState, CallUpdate
from gateway.calls import events as ev
from gateway.store import CallSeed, SQLiteStore, StoreError


def upd(state, call_id="CA1", **kw):
    return CallUpdate(provider="twilio", provider_call_id=call_id, raw_status=state.value if state else None, state=state,
                      params={"CallStatus": state.value if state else ""}, **kw)


async def test_create_then_follow_lifecycle(store):
    seed = CallSeed(workflow_id="wf1", user_id="u1", provider="twilio", initial_context={"tenant": "acme"})
    first = await store.apply_update(upd(CallState.RINGING), run_id="run-1", seed=seed)
    assert first.created and first.outcome == "created"
    assert [e.type for e in first.events] == [ev.CALL_RINGING]
    await store.apply_update(upd(CallState.ANSWERED), run_id="run-1")
    done = await store.apply_update(upd(CallState.COMPLETED, duration=12), run_id="run-1")
    assert [e.type for e in done.events] == [ev.CALL_COMPLETED, ev.CALL_ENDED]
    ended = done.events[1]
    assert ended.data["state"] == "completed" and ended.data["duration"] == 12
    assert ended.data["initial_context"] == {"tenant": "acme"}
    record = await store.get_call("run-1")
    assert record.state == CallState.COMPLETED and record.workflow_id == "wf1"
    assert record.answered_at is not None and record.ended_at is not None
    timeline = await store.get_timeline("run-1")
    assert [t.raw_status for t in timeline] == ["ringing", "answered", "completed"]
    stored = await store.list_events(run_id="run-1")
    assert [e.type for e in stored] == [ev.CALL_RINGING, ev.CALL_ANSWERED, ev.CALL_COMPLETED, ev.CALL_ENDED]
    assert [e.seq for e in stored] == sorted(e.seq for e in stored)


async def test_duplicate_and_late_are_kept_in_timeline_but_emit_nothing(store):
    await store.apply_update(upd(CallState.ANSWERED), run_id="r")
    dup = await store.apply_update(upd(CallState.ANSWERED), run_id="r")
    late = await store.apply_update(upd(CallState.RINGING), run_id="r")
    assert dup.events == [] and dup.outcome == "duplicate"
    assert late.events == [] and late.outcome == "late"
    assert [t.outcome for t in await store.get_timeline("r")] == ["created", "duplicate", "late"]
    assert len(await store.list_events(run_id="r")) == 1


async def test_provider_call_id_finds_the_call_when_run_is_unknown(store):
    await store.apply_update(upd(CallState.RINGING, call_id="CAX"), run_id="run-x")
    found = await store.apply_update(upd(CallState.ANSWERED, call_id="CAX"), run_id=None)
    assert found.record.workflow_run_id == "run-x" and not found.created
    minted = await store.apply_update(upd(CallState.RINGING, call_id="CAY"), run_id=None)
    assert minted.created and minted.record.workflow_run_id not in ("run-x", None)


async def test_hundred_concurrent_callbacks_for_one_call_are_all_kept(store):
    await store.apply_update(upd(CallState.INITIATED), run_id="busy-run")
    states = [CallState.RINGING, CallState.ANSWERED, CallState.COMPLETED, CallState.RINGING]
    results = await asyncio.gather(*(
        store.apply_update(upd(states[i % 4], sequence=None), run_id="busy-run") for i in range(100)
    ))
    assert len(await store.get_timeline("busy-run")) == 101
    emitted = [e.type for r in results for e in r.events]
    assert emitted.count(ev.CALL_ENDED) == 1
    assert emitted.count(ev.CALL_COMPLETED) == 1
    assert (await store.get_call("busy-run")).state == CallState.COMPLETED


async def test_list_calls_pages_with_cursor_and_filters_state(store):
    for i in range(7):
        await store.apply_update(upd(CallState.RINGING if i % 2 else CallState.COMPLETED, call_id=f"C{i}"), run_id=f"run-{i}")
    seen, cursor = [], None
    while True:
        page, cursor = await store.list_calls(limit=3, cursor=cursor)
        seen += [c.workflow_run_id for c in page]
        if cursor is None:
            break
    assert sorted(seen) == [f"run-{i}" for i in range(7)] and len(set(seen)) == 7
    ringing, _ = await store.list_calls(state="ringing", limit=50)
    assert {c.workflow_run_id for c in ringing} == {"run-1", "run-3", "run-5"}
    with pytest.raises(StoreError):
        await store.list_calls(cursor="not-a-cursor")


async def test_record_activity_merges_context_and_writes_events(store):
    await store.apply_update(upd(CallState.ANSWERED), run_id="r")
    events = await store.record_activity("r", source="gateway", kind="media.started", data={"stream": "MZ1"},
                                         events=[(ev.CALL_STARTED, {"stream": "MZ1"})], gathered_context={"name": "Ada"})
    assert [e.type for e in events] == [ev.CALL_STARTED] and events[0].data["detail"] == {"stream": "MZ1"}
    await store.record_activity("r", source="agent", kind="context", data={}, gathered_context={"age": 36})
    record = await store.get_call("r")
    assert record.gathered_context == {"name": "Ada", "age": 36}
    assert [t.kind for t in await store.get_timeline("r")] == ["status", "media.started", "context"]
    with pytest.raises(StoreError):
        await store.record_activity("nope", source="gateway", kind="x", data={})


async def test_one_media_session_owns_a_call_and_a_finished_call_stays_finished(store):
    from gateway.store.activity import CallEnded

    await store.apply_update(upd(CallState.ANSWERED), run_id="m")

    async def activity(kind, session, **kw):
        return [e.type for e in await store.record_activity("m", source="gateway", kind=kind, data={"by": session},
                                                             session=session, **kw)]

    assert await activity("media.connected", "A", media={"stream_id": "MZ-A"}) == []
    assert await activity("media.started", "A", events=[(ev.CALL_STARTED, {})], media={"started": True}) == [ev.CALL_STARTED]
    assert await activity("media.connected", "B") == []  # B replaces A
    assert await activity("transcript", "A", events=[(ev.CONVERSATION_TRANSCRIPT, {})]) == []  # A's writes change nothing
    assert await activity("media.ended", "A", media={"ended": True, "frames_in": 1}) == []
    assert await activity("media.started", "B", events=[(ev.CALL_STARTED, {})], media={"started": True}) == []  # once per call
    await store.apply_update(upd(CallState.COMPLETED), run_id="m")
    assert await activity("transcript", "B", events=[(ev.CONVERSATION_TRANSCRIPT, {})]) == []  # after the end: nothing
    assert await activity("media.ended", "B", events=[(ev.CALL_AGENT_FAILED, {})], media={"ended": True, "frames_in": 7}) == []
    assert await activity("media.ended", "B", media={"ended": True, "frames_in": 99}) == []  # never written over
    with pytest.raises(CallEnded):
        await activity("media.connected", "C")
    record = await store.get_call("m")
    assert record.media == {"stream_id": "MZ-A", "session": "B", "ended": True, "started": True, "frames_in": 7}
    timeline = [(t.kind, t.data.get("by")) for t in await store.get_timeline("m")]
    assert timeline[1:] == [("media.connected", "A"), ("media.started", "A"), ("media.connected", "B"),
                            ("media.started", "B"), ("status", None), ("media.ended", "B")]
    assert [e.type for e in await store.list_events(run_id="m")][-2:] == [ev.CALL_COMPLETED, ev.CALL_ENDED]


def another_instance(store):
    """A second store on the same data: another gateway instance, or the same one restarted."""
    from gateway.store.postgres import PostgresStore

    return PostgresStore(store.url) if isinstance(store, PostgresStore) else SQLiteStore(store.path)


async def test_a_nonce_is_claimed_once_across_instances_until_it_expires(store):
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    until = t0 + timedelta(seconds=300)
    assert await store.claim_nonce("vonage-jti:a", expires_at=until, now=t0)
    assert not await store.claim_nonce("vonage-jti:a", expires_at=until, now=t0 + timedelta(seconds=1))
    other = another_instance(store)
    await other.open()
    try:
        assert not await other.claim_nonce("vonage-jti:a", expires_at=until, now=t0 + timedelta(seconds=299))
        assert await other.claim_nonce("vonage-jti:b", expires_at=until, now=t0)
        assert not await store.claim_nonce("vonage-jti:b", expires_at=until, now=t0)
        later = until + timedelta(seconds=1)  # expired: claimable again, and the expired rows are pruned
        assert await other.claim_nonce("vonage-jti:a", expires_at=later + timedelta(seconds=300), now=later)
        assert not await store.claim_nonce("vonage-jti:a", expires_at=later + timedelta(seconds=300), now=later)
        much_later = later + timedelta(seconds=3600)
        assert await other.claim_nonce("vonage-jti:c", expires_at=much_later + timedelta(seconds=300), now=much_later)
    finally:
        await other.close()
    restarted = another_instance(store)
    await restarted.open()
    try:
        assert not await restarted.claim_nonce("vonage-jti:c", expires_at=much_later, now=much_later)
        assert await nonces_left(restarted) == ["vonage-jti:c"]  # a and b expired and were pruned
    finally:
        await restarted.close()


async def nonces_left(store) -> list[str]:
    from gateway.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        rows = await store._query(lambda conn: conn.fetch("SELECT nonce FROM seen_nonces ORDER BY nonce"))
        return [r["nonce"] for r in rows]
    return await store._read(lambda conn: [r["nonce"] for r in conn.execute("SELECT nonce FROM seen_nonces ORDER BY nonce")])


async def test_data_survives_reopen_and_migrations_are_idempotent(tmp_path):
    path = str(tmp_path / "g.db")
    first = SQLiteStore(path)
    await first.open()
    await first.apply_update(upd(CallState.RINGING), run_id="keep")
    await first.close()
    second = SQLiteStore(path)
    await second.open()
    try:
        assert (await second.get_call("keep")).state == CallState.RINGING
        await second.ping()
    finally:
        await second.close()
