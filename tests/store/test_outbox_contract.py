"""The outbox half of the `Store` contract: fan-out in the same transaction, claims with leases,
per-call order, attempts, endpoint health. Every backend must pass these."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from gateway.calls import CallState, CallUpdate
from gateway.events.fanout import EventFanout, Route
from gateway.store import StoreError
from gateway.store.base import AttemptRecord, DeliveryResult, DirectDispatch


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
    assert await store.release_leases("w1") == 1 and await store.release_leases("w2") == 1
    limited = await store.claim_deliveries("w3", now=now(), lease_seconds=30, capacity={"crm": 1})
    assert len(limited) == 1  # released: claimable again, one per capacity


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
    assert await store.pending_subscriptions() == {"crm"}
    (d,) = [x for x in await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5}) if x.event.type == "call.ringing"]
    await store.finish_delivery(d, "w", DeliveryResult("failed", AttemptRecord(now(), "fail", status=400, request={})))
    assert (await store.retry_delivery(d.id, now=now())).status == "pending"
    assert await store.retry_delivery("msg_nope", now=now()) is None
    count = await store.replay_deliveries("other", since=now() - timedelta(hours=1), until=now() + timedelta(seconds=1),
                                          now=now(), matches=lambda t: t == "call.ringing", ordered=True)
    assert count == 1
    assert await store.pending_subscriptions() == {"crm", "other"}
    assert await store.release_leases("w") >= 0
    page, cursor = await store.list_deliveries(limit=1)
    assert len(page) == 1 and cursor is not None
    try:
        await store.list_deliveries(cursor="junk")
    except StoreError:
        pass
    else:
        raise AssertionError("a bad cursor must be refused")


class Taker:
    """A direct dispatch for the tests: room for the subscriptions in `names`, keeps what it got."""

    def __init__(self, store, owner="w", names=("crm",), lease_seconds=30):
        self.names = set(names)
        self.got = []
        self.dispatch = DirectDispatch(owner=owner, lease_seconds=lease_seconds, room=lambda name: 1000 if name in self.names else 0,
                                       deliver=self.got.extend)
        store.set_dispatch(self.dispatch)


def ok(at=None):
    return DeliveryResult("succeeded", AttemptRecord(at or now(), "success", status=200, latency_ms=1.0, request={}),
                          endpoint_ok=True)


def failed(at=None, status="pending"):
    return DeliveryResult(status, AttemptRecord(at or now(), "retry", status=503, request={}),
                          next_attempt_at=now() + timedelta(hours=1) if status == "pending" else None, endpoint_ok=False)


async def test_a_new_delivery_is_leased_to_the_direct_dispatch_in_its_transaction(store):
    woke = attach(store, Route("crm", ("call.*",)), Route("audit", ("call.*",), ordered=False))
    taker = Taker(store)
    applied = await store.apply_update(upd(CallState.RINGING), run_id="r1")
    (leased,) = taker.got  # handed over after the commit, with its event
    assert leased.subscription == "crm" and leased.event.type == "call.ringing" and leased.event.seq == applied.events[0].seq
    assert leased.order_key == "r1" and leased.status == "pending" and leased.attempts == 0
    # Leased: nobody else can claim it; the subscription it does not take waits for a claim.
    others = await store.claim_deliveries("other", now=now(), lease_seconds=30, capacity={"crm": 5, "audit": 5})
    assert [d.subscription for d in others] == ["audit"]
    await asyncio.sleep(0.05)
    assert woke  # the claimers were told about the row it did not take


async def test_a_direct_dispatch_lease_that_expires_makes_the_row_claimable_again(store):
    attach(store, Route("crm", ("call.*",)))
    taker = Taker(store, lease_seconds=0.3)
    await store.apply_update(upd(CallState.RINGING), run_id="r1")
    (leased,) = taker.got
    (again,) = await _claim_eventually(store, "other", {"crm": 5})  # the worker died: its lease runs out
    assert again.id == leased.id and again.lease_id != leased.lease_id


async def test_the_direct_dispatch_keeps_a_calls_order_and_takes_the_next_one_when_it_finishes(store):
    attach(store, Route("crm", ("call.*",)))
    taker = Taker(store)
    await store.apply_update(upd(CallState.RINGING), run_id="r1")
    await store.apply_update(upd(CallState.COMPLETED), run_id="r1")  # call.completed and call.ended wait
    (first,) = taker.got
    assert first.event.type == "call.ringing"
    assert await store.claim_deliveries("other", now=now(), lease_seconds=30, capacity={"crm": 5}) == []
    taker.got.clear()
    await store.finish_deliveries("w", [(first, ok())])
    (second,) = taker.got  # its successor, leased in the finishing transaction
    assert second.event.type == "call.completed" and second.event.data["state"] == "completed"
    taker.got.clear()
    await store.finish_deliveries("w", [(second, failed(status="failed"))])  # failed for good: the next goes
    (third,) = taker.got
    assert third.event.type == "call.ended"
    taker.got.clear()
    await store.finish_deliveries("w", [(third, ok())])
    assert taker.got == []


async def test_a_retry_holds_the_calls_next_event_and_a_full_worker_leaves_it_for_a_claim(store):
    woke = attach(store, Route("crm", ("call.*",)))
    taker = Taker(store)
    await store.apply_update(upd(CallState.RINGING), run_id="r1")
    await store.apply_update(upd(CallState.ANSWERED), run_id="r1")
    (first,) = taker.got
    taker.got.clear()
    await store.finish_deliveries("w", [(first, failed())])  # pending again, due in an hour
    assert taker.got == []  # the next event still waits behind it
    woke.clear()
    taker.names.clear()  # the worker is full now
    (first,) = await store.claim_deliveries("w", now=now() + timedelta(hours=2), lease_seconds=30, capacity={"crm": 5})
    await store.finish_deliveries("w", [(first, ok())])
    assert taker.got == []
    await asyncio.sleep(0.05)
    assert woke  # the successor is due: the claimers are told
    (claimed,) = await store.claim_deliveries("other", now=now(), lease_seconds=30, capacity={"crm": 5})
    assert claimed.event.type == "call.answered"


async def test_finishing_for_another_owner_leases_nothing_to_the_direct_dispatch(store):
    attach(store, Route("crm", ("call.*",)))
    await store.apply_update(upd(CallState.RINGING), run_id="r1")
    await store.apply_update(upd(CallState.ANSWERED), run_id="r1")
    (first,) = await store.claim_deliveries("claimer", now=now(), lease_seconds=30, capacity={"crm": 5})
    taker = Taker(store)
    await store.finish_deliveries("claimer", [(first, ok())])
    assert taker.got == []  # the successor is left for a claim, not leased to someone else's worker
    (nxt,) = await store.claim_deliveries("claimer", now=now(), lease_seconds=30, capacity={"crm": 5})
    assert nxt.event.type == "call.answered"


async def test_a_batch_of_finished_attempts_is_recorded_with_each_endpoints_net_streak(store):
    attach(store, Route("crm", ("call.*",), ordered=False), Route("billing", ("call.*",), ordered=False))
    for n in range(3):
        await store.apply_update(upd(CallState.RINGING, call_id=f"CA{n}"), run_id=f"r{n}")
    rows = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5, "billing": 5})
    crm = sorted((d for d in rows if d.subscription == "crm"), key=lambda d: d.workflow_run_id)
    billing = sorted((d for d in rows if d.subscription == "billing"), key=lambda d: d.workflow_run_id)
    t0 = now()
    # crm: fail, fail, then a success: the streak ends. billing: success, then two failures: a
    # streak of two that started with the first of them.
    items = [(crm[0], failed(t0)), (billing[0], ok(t0)), (crm[1], failed(t0 + timedelta(seconds=1))),
             (billing[1], failed(t0 + timedelta(seconds=2))), (crm[2], ok(t0 + timedelta(seconds=3))),
             (billing[2], failed(t0 + timedelta(seconds=4)))]
    healths = await store.finish_deliveries("w", items)
    assert [h.subscription for h in healths] == [d.subscription for d, _ in items]
    by_name = {h.subscription: h for h in healths}
    assert by_name["crm"].consecutive_failures == 0 and by_name["crm"].first_failure_at is None
    assert by_name["billing"].consecutive_failures == 2
    assert abs((by_name["billing"].first_failure_at - (t0 + timedelta(seconds=2))).total_seconds()) < 0.001
    for delivery, result in items:
        found, attempts = await store.get_delivery(delivery.id)
        assert found.status == result.status and [a.status for a in attempts] == [result.attempt.status]
    # Another batch of failures adds to billing's streak and keeps when it began.
    (again,) = [d for d in await store.claim_deliveries("w", now=now() + timedelta(hours=2), lease_seconds=30,
                                                        capacity={"billing": 1})]
    (health,) = await store.finish_deliveries("w", [(again, failed(t0 + timedelta(seconds=9)))])
    assert health.consecutive_failures == 3
    assert abs((health.first_failure_at - (t0 + timedelta(seconds=2))).total_seconds()) < 0.001
    assert await store.finish_deliveries("w", []) == []


async def test_first_attempt_at_stays_the_first_after_a_retry(store):
    """A retry starts a new schedule (its total_timeout counts from the retry's first attempt),
    but the delivery's first attempt is still the first one made."""
    from gateway.calls.record import isoformat

    attach(store, Route("crm", ("call.ringing",)))
    await store.apply_update(upd(CallState.RINGING), run_id="r")
    first_at = now() - timedelta(minutes=5)
    (d,) = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5})
    await store.finish_delivery(d, "w", DeliveryResult("failed", AttemptRecord(first_at, "fail", status=400, request={})))
    await store.retry_delivery(d.id, now=now())
    (again,) = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5})
    retried_at = now()
    await store.finish_delivery(again, "w", DeliveryResult("succeeded", AttemptRecord(retried_at, "success", status=200, request={})))
    found, attempts = await store.get_delivery(d.id)
    (listed,), _ = await store.list_deliveries(run_id="r")
    for view in (found.to_dict(), listed.to_dict()):
        assert view["first_attempt_at"] == isoformat(first_at)
        assert view["schedule_started_at"] == isoformat(retried_at)
        assert view["last_attempt_at"] == isoformat(retried_at)
    assert len(attempts) == 2


# -- leases: a finish counts only under the lease it was sent under ---------------------------


async def _claim_eventually(store, owner, capacity, lease_seconds=30):
    """Claim until something comes (a lease elsewhere expires, on the store's clock)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not (found := await store.claim_deliveries(owner, now=now(), lease_seconds=lease_seconds, capacity=capacity)):
        assert loop.time() < deadline, "nothing became claimable"
        await asyncio.sleep(0.05)
    return found


async def test_a_late_finish_from_an_expired_lease_changes_nothing(store):
    attach(store, Route("crm", ("call.*",)))
    await store.apply_update(upd(CallState.RINGING), run_id="r1")
    await store.apply_update(upd(CallState.ANSWERED), run_id="r1")
    (stale,) = await store.claim_deliveries("w1", now=now(), lease_seconds=0.3, capacity={"crm": 5})
    # w1's attempt outlives its lease: w2 takes the row over, delivers it, and the call's next event goes.
    (fresh,) = await _claim_eventually(store, "w2", {"crm": 5})
    assert fresh.id == stale.id and fresh.lease_id != stale.lease_id
    assert (await store.finish_delivery(fresh, "w2", ok())).consecutive_failures == 0
    (nxt,) = await store.claim_deliveries("w2", now=now(), lease_seconds=30, capacity={"crm": 5})
    assert nxt.event.type == "call.answered"
    # w1 comes back: neither its 503 nor a failure may touch the delivered row.
    assert await store.finish_delivery(stale, "w1", failed()) is None
    assert await store.finish_delivery(stale, "w1", failed(status="failed")) is None
    found, attempts = await store.get_delivery(stale.id)
    assert found.status == "succeeded" and found.attempts == 1 and found.last_status == 200
    assert sorted(a.status for a in attempts) == [200, 503, 503]  # kept as history...
    late = [a for a in attempts if a.status == 503]
    assert all("lease" in (a.error or "") for a in late)  # ...saying they came too late
    assert await store.claim_deliveries("w3", now=now(), lease_seconds=30, capacity={"crm": 5}) == []  # nothing re-sent
    # The same owner's own earlier lease is not the lease it holds now either.
    await store.finish_delivery(nxt, "w2", ok())


async def test_a_claimer_whose_clock_runs_ahead_does_not_take_a_leased_row(store):
    attach(store, Route("crm", ("call.*",)))
    await store.apply_update(upd(CallState.RINGING), run_id="r1")
    (held,) = await store.claim_deliveries("w1", now=now(), lease_seconds=30, capacity={"crm": 5})
    # Leases run on the store's clock: a worker an hour ahead still sees the lease held.
    assert await store.claim_deliveries("w2", now=now() + timedelta(hours=1), lease_seconds=30, capacity={"crm": 5}) == []
    assert (await store.finish_delivery(held, "w1", ok())).consecutive_failures == 0


async def test_a_finish_written_twice_records_its_attempt_once(store):
    """A finish batch the store committed but whose answer was lost is written again (one by one):
    the attempt is recorded once and the row moves once."""
    attach(store, Route("crm", ("call.*",), ordered=False))
    for n in range(2):
        await store.apply_update(upd(CallState.RINGING, call_id=f"CA{n}"), run_id=f"r{n}")
    rows = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5})
    items = [(rows[0], ok()), (rows[1], failed())]
    first = await store.finish_deliveries("w", items)
    again = [await store.finish_delivery(d, "w", r) for d, r in items]
    assert [h.subscription for h in first] == [h.subscription for h in again] == ["crm", "crm"]
    for delivery, result in items:
        found, attempts = await store.get_delivery(delivery.id)
        assert found.attempts == 1 and found.status == result.status and len(attempts) == 1
    assert (await store.endpoint_health())["crm"].consecutive_failures == 1  # the failure counted once


async def test_a_retry_asked_for_while_an_attempt_is_in_flight_is_sent_after_it(store):
    attach(store, Route("crm", ("call.*",)))
    await store.apply_update(upd(CallState.RINGING), run_id="r1")
    await store.apply_update(upd(CallState.ANSWERED), run_id="r1")
    (sending,) = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 5})
    retried = await store.retry_delivery(sending.id, now=now())
    assert retried is not None and retried.status == "pending"
    # Not sent a second time while the first attempt is on the wire...
    assert await store.claim_deliveries("w2", now=now(), lease_seconds=30, capacity={"crm": 5}) == []
    await store.finish_delivery(sending, "w", ok())
    # ...but once it finished: pending again, due at once, its schedule afresh, still ahead of the next event.
    found, attempts = await store.get_delivery(sending.id)
    assert found.status == "pending" and found.attempts == 0 and len(attempts) == 1
    (again,) = await store.claim_deliveries("w2", now=now(), lease_seconds=30, capacity={"crm": 5})
    assert again.id == sending.id
    await store.finish_delivery(again, "w2", ok())
    assert (await store.get_delivery(sending.id))[0].status == "succeeded"
    (nxt,) = await store.claim_deliveries("w2", now=now(), lease_seconds=30, capacity={"crm": 5})
    assert nxt.event.type == "call.answered"
    # A replay of a row in flight waits for its attempt in the same way.
    count = await store.replay_deliveries("crm", since=now() - timedelta(hours=1), until=now() + timedelta(seconds=1),
                                          now=now(), matches=lambda t: True, ordered=True)
    assert count == 2
    taken = await store.claim_deliveries("w3", now=now(), lease_seconds=30, capacity={"crm": 5})
    assert nxt.id not in {d.id for d in taken}
    await store.finish_delivery(nxt, "w2", ok())
    found, _ = await store.get_delivery(nxt.id)
    assert found.status == "pending" and found.attempts == 0


async def test_claims_share_out_among_subscriptions_with_a_backlog(store):
    """900 due rows of a slow endpoint (room 2) do not hide the 5 of another (room 10)."""
    attach(store, Route("slow", ("backlog.slow",), ordered=False), Route("fast", ("backlog.fast",), ordered=False))
    await store.apply_update(upd(CallState.RINGING), run_id="r1")
    await store.record_activity("r1", source="test", kind="backlog", data={}, events=[("backlog.slow", {})] * 900)
    await store.record_activity("r1", source="test", kind="backlog", data={}, events=[("backlog.fast", {})] * 5)
    # The overall limit is shared out, not taken by whichever subscription is asked first.
    first = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"slow": 50, "fast": 50}, limit=4)
    assert sorted(d.subscription for d in first) == ["fast", "fast", "slow", "slow"]
    claimed = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"slow": 2, "fast": 10})
    assert sorted(d.subscription for d in claimed) == ["fast"] * 3 + ["slow"] * 2
    # Within a subscription, oldest first.
    oldest = [e.seq for e in await store.list_events(limit=10) if e.type == "backlog.slow"][:4]
    assert sorted(d.event_seq for d in first + claimed if d.subscription == "slow") == oldest


async def test_a_finish_batch_maps_responses_into_each_call_in_order(store):
    """Several attempts of one batch map their answers into the same call and another: each
    merged in the batch's order, the later one's keys winning."""
    attach(store, Route("crm", ("call.*",), ordered=False))
    await store.apply_update(upd(CallState.RINGING, "CA1"), run_id="r1")
    await store.apply_update(upd(CallState.ANSWERED, "CA1"), run_id="r1")
    await store.apply_update(upd(CallState.RINGING, "CA2"), run_id="r2")
    claimed = await store.claim_deliveries("w", now=now(), lease_seconds=30, capacity={"crm": 10})
    r1 = sorted((d for d in claimed if d.workflow_run_id == "r1"), key=lambda d: d.event_seq)
    (r2,) = [d for d in claimed if d.workflow_run_id == "r2"]

    def ok(mapped):
        return DeliveryResult("succeeded", AttemptRecord(now(), "success", status=200, request={}), endpoint_ok=True,
                              gathered_context=mapped)

    await store.finish_deliveries("w", [(r1[0], ok({"crm_id": "A", "stage": 1})), (r2, ok({"crm_id": "B"})),
                                        (r1[1], ok({"stage": 2}))])
    assert (await store.get_call("r1")).gathered_context == {"crm_id": "A", "stage": 2}
    assert (await store.get_call("r2")).gathered_context == {"crm_id": "B"}
