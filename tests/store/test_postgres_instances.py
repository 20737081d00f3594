"""Two store instances on one PostgreSQL: what several gateway processes rely on."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from gateway.calls import CallState, CallUpdate
from gateway.calls import events as ev
from gateway.events.fanout import EventFanout, Route
import pytest

from postgres_support import leader_pids, postgres_schema_url, terminate_backend

pytestmark = pytest.mark.postgresql  # deselected, and reported, when PostgreSQL is not reachable


async def two_stores(url):
    from gateway.store.postgres import PostgresStore

    a, b = PostgresStore(url), PostgresStore(url)
    await asyncio.gather(a.open(), b.open())  # migrations applied once, safely, when both start together
    return a, b


async def test_callbacks_for_one_call_on_two_instances_serialize():
    async with postgres_schema_url() as url:
        a, b = await two_stores(url)
        try:
            states = [CallState.RINGING, CallState.ANSWERED, CallState.COMPLETED, CallState.BUSY]
            results = await asyncio.gather(*(
                (a if i % 2 else b).apply_update(
                    CallUpdate(provider="twilio", provider_call_id="CA1", raw_status=states[i % 4].value, state=states[i % 4], params={}),
                    run_id="shared-run")
                for i in range(60)
            ))
            emitted = [e.type for r in results for e in r.events]
            assert emitted.count(ev.CALL_ENDED) == 1
            assert sum(r.created for r in results) == 1
            assert len(await a.get_timeline("shared-run")) == 60
        finally:
            await asyncio.gather(a.close(), b.close())


async def test_two_workers_never_claim_the_same_row():
    async with postgres_schema_url() as url:
        a, b = await two_stores(url)
        try:
            for store in (a, b):
                store.set_fanout(EventFanout([Route("crm", ("call.*",), ordered=False)]))
            for i in range(40):
                await a.apply_update(CallUpdate(provider="twilio", provider_call_id=f"C{i}", raw_status="ringing",
                                                state=CallState.RINGING, params={}), run_id=f"r{i}")
            now = datetime.now(timezone.utc)
            ids: list[str] = []
            for _ in range(20):  # racing claimers may come back short-handed, never doubled
                claims = await asyncio.gather(*(
                    (a if i % 2 else b).claim_deliveries(f"w{i}", now=now, lease_seconds=60, capacity={"crm": 7}) for i in range(10)
                ))
                ids += [d.id for batch in claims for d in batch]
                if len(ids) >= 40:
                    break
            assert len(ids) == len(set(ids)) == 40
        finally:
            await asyncio.gather(a.close(), b.close())


async def test_notify_wakes_the_other_instance():
    async with postgres_schema_url() as url:
        a, b = await two_stores(url)
        try:
            woke = asyncio.Event()
            a.set_fanout(EventFanout([Route("crm", ("call.*",))]))
            b.set_fanout(EventFanout([Route("crm", ("call.*",))]), woke.set)
            await a.apply_update(CallUpdate(provider="twilio", provider_call_id="C1", raw_status="ringing",
                                            state=CallState.RINGING, params={}), run_id="r1")
            await asyncio.wait_for(woke.wait(), 5)
        finally:
            await asyncio.gather(a.close(), b.close())


async def test_one_leader_per_database_and_takeover():
    async with postgres_schema_url() as url:
        a, b = await two_stores(url)
        try:
            assert await a.hold_leadership("campaign-runner") is True
            assert await a.hold_leadership("campaign-runner") is True
            assert await b.hold_leadership("campaign-runner") is False
            await a.close()  # the leader goes away: its lock goes with its connection
            assert await b.hold_leadership("campaign-runner") is True
        finally:
            await b.close()


async def test_two_instances_claim_fairly_past_one_subscriptions_backlog():
    """900 due rows of a slow endpoint (room 2 on each instance) and 5 of another (room 10):
    the two instances claiming at once take 2 + 2 of the first and all 5 of the second,
    none twice."""
    async with postgres_schema_url() as url:
        a, b = await two_stores(url)
        try:
            routes = [Route("slow", ("backlog.slow",), ordered=False), Route("fast", ("backlog.fast",), ordered=False)]
            for store in (a, b):
                store.set_fanout(EventFanout(routes))
            await a.apply_update(CallUpdate(provider="twilio", provider_call_id="C1", raw_status="ringing",
                                            state=CallState.RINGING, params={}), run_id="r1")
            await a.record_activity("r1", source="test", kind="backlog", data={}, events=[("backlog.slow", {})] * 900)
            await b.record_activity("r1", source="test", kind="backlog", data={}, events=[("backlog.fast", {})] * 5)
            now = datetime.now(timezone.utc)
            claims = await asyncio.gather(*(
                store.claim_deliveries(owner, now=now, lease_seconds=60, capacity={"slow": 2, "fast": 10})
                for store, owner in ((a, "wa"), (b, "wb"))))
            got = [d for batch in claims for d in batch]
            assert len({d.id for d in got}) == len(got)
            assert sorted(d.subscription for d in got) == ["fast"] * 5 + ["slow"] * 4
        finally:
            await asyncio.gather(a.close(), b.close())


async def test_a_leader_whose_session_is_terminated_stops_leading_and_listens_again():
    """pg_terminate_backend on the leader's listener session (a failover, an idle timeout): its
    lock goes with it, the other instance takes over, the old leader knows it no longer leads,
    and its listener comes back (NOTIFY wake-ups and control requests reach it again)."""
    async with postgres_schema_url() as url:
        a, b = await two_stores(url)
        try:
            controls: list[tuple] = []
            woke = asyncio.Event()
            a.set_control_handler(lambda *args: controls.append(args))
            a.set_fanout(EventFanout([Route("crm", ("call.*",))]), woke.set)
            b.set_fanout(EventFanout([Route("crm", ("call.*",))]))
            assert await a.hold_leadership("campaign-runner") is True
            assert await b.hold_leadership("campaign-runner") is False
            (pid,) = await leader_pids(url, "campaign-runner")
            await terminate_backend(pid)

            async def leaders() -> list[bool]:
                return [await a.hold_leadership("campaign-runner"), await b.hold_leadership("campaign-runner")]

            # a's session is gone, and its lock with it: whoever asks first leads (a, reconnected,
            # or b), the other does not, and the lock is held by a live session
            got = await _until(leaders, lambda got: sorted(got) == [False, True], "exactly one leads")
            for _ in range(5):
                assert await leaders() == got
            (holder,) = await leader_pids(url, "campaign-runner")
            assert holder != pid
            assert a.listener.connects == 2

            woke.clear()  # LISTEN works on a's new session: a wake-up and a control request reach it
            await _until(lambda: _publish(b, controls), bool, "a control request reaches a")
            await b.apply_update(CallUpdate(provider="twilio", provider_call_id="C9", raw_status="ringing",
                                            state=CallState.RINGING, params={}), run_id="r9")
            await asyncio.wait_for(woke.wait(), 5)

            leader, other = (a, b) if got[0] else (b, a)
            await leader.close()  # the leader goes away: the other takes over
            await _until(lambda: other.hold_leadership("campaign-runner"), bool, "the other leads")
        finally:
            await asyncio.gather(a.close(), b.close())


async def test_a_replay_waits_for_the_run_locks_its_calls_callbacks_hold():
    """Replay takes the `run:` locks a callback of the call takes, so a callback's newer event
    is queued after the replayed rows on an ordered subscription, never before them."""
    import uuid

    import asyncpg

    from gateway.store.postgres import PostgresStore
    from postgres_support import POSTGRES_URL

    async with postgres_schema_url() as url:
        store = PostgresStore(url)
        await store.open()
        holder = await asyncpg.connect(POSTGRES_URL)
        try:
            runs = [f"replay-{uuid.uuid4().hex}" for _ in range(3)]
            for run in runs:
                await store.apply_update(CallUpdate(provider="twilio", provider_call_id=f"CR{run}", raw_status="ringing",
                                                    state=CallState.RINGING, params={}), run_id=run)
            since = datetime(2000, 1, 1, tzinfo=timezone.utc)
            transaction = holder.transaction()  # a callback of the second call, mid-transaction
            await transaction.start()
            await holder.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"run:{runs[1]}")
            replay = asyncio.create_task(store.replay_deliveries("crm", since=since, until=datetime.now(timezone.utc),
                                                                 now=datetime.now(timezone.utc), matches=lambda t: True,
                                                                 ordered=True))

            async def waiting() -> int:
                return await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND objid::bigint = (hashtext($1)::bigint & 4294967295)", f"run:{runs[1]}")

            deadline = asyncio.get_running_loop().time() + 10
            while not await waiting():
                assert asyncio.get_running_loop().time() < deadline, "the replay never waited for the run lock"
                await asyncio.sleep(0.02)
            assert not replay.done()
            assert await store._query(lambda conn: conn.fetchval("SELECT count(*) FROM deliveries")) == 0  # nothing replayed yet
            await transaction.commit()
            assert await asyncio.wait_for(replay, 10) == 3
        finally:
            await holder.close()
            await store.close()


async def _publish(store, received: list) -> bool:
    await store.publish_control("run-ctl", "clear", {"n": len(received)})
    await asyncio.sleep(0.2)
    return any(run == "run-ctl" for run, _, _ in received)


async def _until(ask, good, what: str, timeout: float = 15.0):
    """Ask (an async call) until its answer is good; fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await ask()
        if good(got):
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {got!r})")
        await asyncio.sleep(0.05)
