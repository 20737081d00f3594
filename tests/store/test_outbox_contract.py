"""The outbox half of the `Store` contract: fan-out in the same transaction, claims with leases,
per-call order, attempts, endpoint health. Every backend must pass these."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from gateway.calls import CallState, CallUpdate
from gateway.events.fanout import EventFanout, Route
from gateway.store import StoreError
from gateway.store.base import AttemptRecord, DeliveryResult


def upd(state, call_id="CA1"):
    return CallUpdate(provider="twilio", provider_call_id=call_id, raw_status=state.value, state=state, params={})


def now():
    return datetime.now(timezone.utc)


def attach(store, *routes):
    woke = []
    store.set_fanout(EventFanout(routes), lambda: woke.append(1))
    return woke


async def test_events_and_deliveries_are_written_together(store):
    woke = attach(store, Route("crm", ("call.*",)), Route("ended-only", ("call.ended",), ordered=False))
    await store.apply_update(upd(CallState.RINGING), run_id="r1")
    await store.apply_update(upd(CallState.COMPLETED), run_id="r1")
    rows, _ = await store.list_deliveries(limit=50)
    assert sorted((r.subscription, r.event.type) for r in rows) == [
        ("crm", "call.completed"), ("crm", "call.ended"), ("crm", "call.ringing"), ("ended-only", "call.ended")]
    assert all(r.status == "pending" and r.id.startswith("msg_") for r in rows)
    await asyncio.sleep(0.05)
    assert woke  # the worker is told at once


async def test_claim_respects_order_capacity_and_leases(store):
    attach(store, Route("crm", ("call.*",)))
    for state in (CallState.RINGING, CallState.ANSWERED, CallState.COMPLETED):
        await store.apply_update(upd(state, "CA1"), run_id="a")
        await store.apply_update(upd(state, "CA2"), run_id="b")
    claimed = await store.claim_deliveries("w1", now=now(), lease_seconds=30, capacity={"crm": 10})
    # Ordered: only the first event of each call may go.
    assert sorted((d.workflow_run_id, d.event.type) for d in claimed) == [("a", "call.ringing"), ("b", "call.ringing")]
    assert await store.claim_deliveries("w2", now=now(), lease_seconds=30, capacity={"crm": 10}) == []
    first = next(d for d in claimed if d.workflow_run_id == "a")
    ok = DeliveryResult("succeeded", AttemptRecord(now(), "success", status=200, latency_ms=3.0, request={"url": "x"}), endpoint_ok=True)
    await store.finish_delivery(first, "w1", ok)
    nxt = await store.claim_deliveries("w2", now=now(), lease_seconds=30, capacity={"crm": 10})
    assert [(d.workflow_run_id, d.event.type) for d in nxt] == [("a", "call.answered")]
    limited = await store.claim_deliveries("w3", now=now() + timedelta(seconds=60), lease_seconds=30, capacity={"crm": 1})
    assert len(limited) == 1  # leases expired after 30 s: claimable again, one per capacity


async def test_retry_schedule_attempts_and_health(store):
    attach(store, Route("crm", ("call.ringing",)))
    await store.apply_update(upd(CallState.RINGING), run_id="r")
    (delivery,) = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5})
    later = now() + timedelta(seconds=120)
    retry = DeliveryResult("pending", AttemptRecord(now(), "retry", status=503, error=None, request={}), next_attempt_at=later, endpoint_ok=False)
    health = await store.finish_delivery(delivery, "w", retry)
    assert health.consecutive_failures == 1 and health.first_failure_at is not None
    assert await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5}) == []
    (again,) = await store.claim_deliveries("w", now=later + timedelta(seconds=1), lease_seconds=30, capacity={"crm": 5})
    assert again.id == delivery.id and again.attempts == 1 and again.first_attempt_at is not None
    ok = DeliveryResult("succeeded", AttemptRecord(now(), "success", status=200, request={}), endpoint_ok=True,
                        gathered_context={"crm_status_code": 200})
    health = await store.finish_delivery(again, "w", ok)
    assert health.consecutive_failures == 0
    found, attempts = await store.get_delivery(delivery.id)
    assert found.status == "succeeded" and [a.status for a in attempts] == [503, 200]
    assert (await store.get_call("r")).gathered_context == {"crm_status_code": 200}


async def test_named_leases_are_released_and_due_again_at_once(store):
    attach(store, Route("crm", ("call.ringing",)))
    for n, run in enumerate(("r1", "r2")):
        await store.apply_update(upd(CallState.RINGING, call_id=f"CA{n}"), run_id=run)
    held, kept = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5})
    assert await store.claim_deliveries("w2", now=now(), lease_seconds=30, capacity={"crm": 5}) == []  # both leased
    assert await store.release_leases("w2", [held.id]) == 0  # not its lease
    assert await store.release_leases("w", []) == 0
    assert await store.release_leases("w", [held.id, "msg_absent"]) == 1
    (again,) = await store.claim_deliveries("w2", now=now(), lease_seconds=30, capacity={"crm": 5})
    assert again.id == held.id and again.attempts == 0  # released unsent: no attempt counted
    assert await store.release_leases("w") == 1  # the other one, still w's


async def test_disable_enable_retry_replay_and_stats(store):
    attach(store, Route("crm", ("call.*", "webhook.*")))
    await store.apply_update(upd(CallState.RINGING), run_id="r")
    events = await store.set_endpoint_disabled("crm", reason="410", now=now())
    assert [e.type for e in events] == ["webhook.endpoint_disabled"]
    health = await store.endpoint_health()
    assert health["crm"].disabled_reason == "410"
    await store.set_endpoint_disabled("crm", reason=None, now=now())
    assert (await store.endpoint_health())["crm"].disabled_at is None
    stats = await store.outbox_stats(now=now())
    assert stats["pending"] == 2 and stats["oldest_pending_seconds"] >= 0
    (d,) = [x for x in await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5}) if x.event.type == "call.ringing"]
    await store.finish_delivery(d, "w", DeliveryResult("failed", AttemptRecord(now(), "fail", status=400, request={})))
    assert (await store.retry_delivery(d.id, now=now())).status == "pending"
    assert await store.retry_delivery("msg_nope", now=now()) is None
    count = await store.replay_deliveries("other", since=now() - timedelta(hours=1), until=now() + timedelta(seconds=1),
                                          now=now(), matches=lambda t: t == "call.ringing", ordered=True)
    assert count == 1
    assert await store.release_leases("w") >= 0
    page, cursor = await store.list_deliveries(limit=1)
    assert len(page) == 1 and cursor is not None
    try:
        await store.list_deliveries(cursor="junk")
    except StoreError:
        pass
    else:
        raise AssertionError("a bad cursor must be refused")
