"""Callbacks that wait together are written by PostgreSQL in one transaction (`_apply_batch`):
the same calls, timelines, events and deliveries as writing them one at a time; when a batch
fails, each callback alone (one bad callback does not fail its neighbours); and batches of two
instances on the same calls neither deadlock nor lose a callback."""

from __future__ import annotations

import asyncio
import random

import pytest

from batch_support import one_then_batched, script, snapshot
from gateway.calls import CallState, CallUpdate
from gateway.events.fanout import EventFanout, Route
from gateway.store.base import DirectDispatch, StoreError
from postgres_support import postgres_schema_url
from support import eventually

pytestmark = pytest.mark.postgresql  # deselected, and reported, when PostgreSQL is not reachable


async def opened(url: str, taken: list):
    from gateway.store.postgres import PostgresStore

    store = PostgresStore(url)
    store.set_fanout(EventFanout([Route("crm", ("call.*",)), Route("audit", ("call.ended",), ordered=False)]))
    store.set_dispatch(DirectDispatch(owner="w", lease_seconds=60, room=lambda name: 1000 if name == "crm" else 0, deliver=taken.extend))
    await store.open()
    return store


def counting(store, sizes: list[int]) -> None:
    """Record the size of every batch `store` writes."""
    real = store._write_callbacks

    async def count(conn, items, leased):
        sizes.append(len(items))
        return await real(conn, items, leased)

    store._write_callbacks = count


async def test_a_batch_writes_what_the_callbacks_write_one_at_a_time() -> None:
    for seed in range(2):
        callbacks = script(seed)
        one_taken: list = []
        batch_taken: list = []
        async with postgres_schema_url() as one_url, postgres_schema_url() as batch_url:
            one = await opened(one_url, one_taken)
            batched = await opened(batch_url, batch_taken)
            one_sizes: list[int] = []
            sizes: list[int] = []
            one._callbacks.min_batch = len(callbacks) + 1  # the reference: every callback in a transaction of its own
            counting(one, one_sizes)
            counting(batched, sizes)
            try:
                together = await one_then_batched(one, batched, callbacks, one_taken, batch_taken)
                assert not one_sizes  # one at a time: never a batch
                assert max(sizes) > 10  # they did wait together
                assert all(d.lease_id and d.event_seq == d.event.seq for d in batch_taken)
                events = await batched.list_events(limit=500)
                assert [e.seq for e in events] == sorted(e.seq for e in events)
                assert [e.seq for b in together for e in b.events] == sorted(e.seq for e in events)  # numbered in order
                leased = {d.id: d.lease_id for d in batch_taken}
                rows, _ = await batched.list_deliveries(limit=500)
                assert {d.id for d in rows if d.id in leased} == set(leased)
            finally:
                await one.close()
                await batched.close()


async def test_a_batch_that_fails_is_written_one_callback_at_a_time() -> None:
    async with postgres_schema_url() as url, postgres_schema_url() as reference_url:
        taken: list = []
        store = await opened(url, taken)
        failures: list[int] = []
        write_events = store._write_events

        async def broken(conn, groups, leased=None, **options):
            if len(groups) == 1:  # one callback alone: written as it is
                return await write_events(conn, groups, leased, **options)
            failures.append(len(groups))
            await conn.execute("INSERT INTO events (id, type, occurred_at, data) VALUES ('x', 'x', now(), '{}')")
            raise RuntimeError("the batch breaks after writing")

        store._write_events = broken
        reference = await opened(reference_url, [])
        reference._callbacks.min_batch = 1000  # every callback in a transaction of its own
        try:
            callbacks = script(7, n=40)
            applied = await asyncio.gather(*(store.apply_update(update, run_id=run) for update, run in callbacks))
            assert failures and max(failures) > 1  # a batch was tried and failed
            assert len(applied) == 40
            for update, run in callbacks:
                await reference.apply_update(update, run_id=run)
            assert await snapshot(store) == await snapshot(reference)  # nothing of the broken batch stayed
        finally:
            await store.close()
            await reference.close()


async def test_one_bad_callback_does_not_fail_its_neighbours() -> None:
    """PostgreSQL refuses a NUL character in JSON: that callback fails alone, the others of its batch are written."""
    async with postgres_schema_url() as url:
        store = await opened(url, [])
        sizes: list[int] = []
        counting(store, sizes)
        try:
            callbacks = [(CallUpdate(provider="twilio", provider_call_id=f"CA{i}", raw_status="ringing", state=CallState.RINGING,
                                     params={"CallSid": f"CA{i}", "note": "bad\x00" if i == 5 else "fine"}), f"run-{i}")
                         for i in range(20)]
            results = await asyncio.gather(*(store.apply_update(u, run_id=r) for u, r in callbacks), return_exceptions=True)
            assert max(sizes) > 1
            assert isinstance(results[5], StoreError)
            assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [5]
            calls, _ = await store.list_calls(limit=100)
            assert sorted(c.workflow_run_id for c in calls) == sorted(f"run-{i}" for i in range(20) if i != 5)
            assert len(await store.list_events(limit=500)) == 19
        finally:
            await store.close()


async def test_batches_of_two_instances_on_the_same_calls() -> None:
    """Callbacks for the same calls, some by run id and some by the provider's call id only,
    sent to two instances at once: no deadlock, every callback written once, one end per call."""
    async with postgres_schema_url() as url:
        a, b = await opened(url, []), await opened(url, [])
        try:
            rng = random.Random(3)
            states = [CallState.RINGING, CallState.ANSWERED, CallState.COMPLETED]
            callbacks = [(CallUpdate(provider="twilio", provider_call_id=f"CA{call}", raw_status=state.value, state=state,
                                     params={}), f"run-{call}" if rng.random() < 0.7 else None)
                         for call in range(15) for state in states for _ in range(3)]
            rng.shuffle(callbacks)
            await asyncio.gather(*(a.apply_update(update, run_id=f"run-{update.provider_call_id[2:]}")
                                   for update in {u.provider_call_id: u for u, _ in callbacks}.values()))  # calls exist
            results = await asyncio.gather(*((a if i % 2 else b).apply_update(update, run_id=run)
                                             for i, (update, run) in enumerate(callbacks)))
            assert len(results) == len(callbacks)
            for call in range(15):
                timeline = await a.get_timeline(f"run-{call}")
                assert len(timeline) == 1 + 9
                ended = [e for e in await a.list_events(run_id=f"run-{call}", limit=100) if e.type == "call.ended"]
                assert len(ended) == 1
        finally:
            await asyncio.gather(a.close(), b.close())


async def test_a_row_behind_its_calls_pending_one_wakes_no_claimer_until_that_one_ends() -> None:
    """NOTIFY goes out for rows a claim can take now: a call's next event, while an earlier one
    is pending, wakes nobody; when the earlier one ends, the finish wakes the claimers for it."""
    from datetime import datetime, timezone

    from gateway.store.base import AttemptRecord, DeliveryResult

    async with postgres_schema_url() as url:
        a = await opened(url, [])
        a.set_dispatch(DirectDispatch(owner="a", lease_seconds=60, room=lambda name: 0, deliver=lambda rows: None))
        b = await opened(url, [])
        b.set_dispatch(None)  # every row b's worker takes, it claims
        wakes: list[int] = []
        b.set_fanout(b.fanout, lambda: wakes.append(1))
        try:
            def update(call: str, state: CallState) -> CallUpdate:
                return CallUpdate(provider="twilio", provider_call_id=call, raw_status=state.value, state=state, params={})

            await a.apply_update(update("CA1", CallState.RINGING), run_id="r1")  # no room: queued for a claim
            await eventually(lambda: len(wakes) == 1)
            await a.apply_update(update("CA1", CallState.ANSWERED), run_id="r1")  # behind r1's ringing: no wake-up
            await a.apply_update(update("CA2", CallState.RINGING), run_id="r2")  # another call's: a wake-up
            await eventually(lambda: len(wakes) >= 2)
            assert len(wakes) == 2
            now = datetime.now(timezone.utc)
            claimed = await b.claim_deliveries("w", now=now, lease_seconds=60, capacity={"crm": 10})
            assert sorted(d.event.type + d.workflow_run_id for d in claimed) == ["call.ringingr1", "call.ringingr2"]
            ringing = next(d for d in claimed if d.workflow_run_id == "r1")
            await b.finish_delivery(ringing, "w", DeliveryResult("succeeded", AttemptRecord(now, "success", status=200)))
            await eventually(lambda: len(wakes) == 3)  # r1's answered is free now
            claimed = await b.claim_deliveries("w", now=datetime.now(timezone.utc), lease_seconds=60, capacity={"crm": 10})
            assert [(d.event.type, d.workflow_run_id) for d in claimed] == [("call.answered", "r1")]
        finally:
            await asyncio.gather(a.close(), b.close())

