"""SQLite group commit: transactions queued together share one COMMIT, yet each stays atomic
and none is answered before the commit that makes it durable."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gateway.calls import CallState, CallUpdate
from gateway.events.fanout import EventFanout, Route
from gateway.store import SQLiteStore, StoreError


def ringing(call_id: str) -> CallUpdate:
    return CallUpdate(provider="twilio", provider_call_id=call_id, raw_status="ringing", state=CallState.RINGING,
                      params={"CallStatus": "ringing"})


@pytest.fixture
async def store(tmp_path):
    backend = SQLiteStore(str(tmp_path / "gateway.db"))
    backend.set_fanout(EventFanout([Route("crm", ("call.*",), True)]))
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def test_concurrent_transactions_share_commits_and_all_persist(store, tmp_path):
    sizes: list[int] = []
    run_group = store._run_group

    def spy(fns):
        sizes.append(len(fns))
        return run_group(fns)

    store._run_group = spy
    results = await asyncio.gather(*[store.apply_update(ringing(f"CA{i}"), run_id=f"run-{i}") for i in range(200)])
    assert all(r.created for r in results)
    assert sum(sizes) == 200 and len(sizes) < 200  # grouped
    await store.close()
    reopened = SQLiteStore(str(tmp_path / "gateway.db"))
    await reopened.open()
    try:
        calls, _ = await reopened.list_calls(limit=500)
        assert len(calls) == 200
        events = await reopened.list_events(limit=500)
        assert len(events) == 200
        deliveries, _ = await reopened.list_deliveries(limit=500)
        assert len(deliveries) == 200
    finally:
        await reopened.close()


async def test_a_failing_transaction_is_rolled_back_alone(store):
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO subscription_health (subscription, consecutive_failures) VALUES ('ghost', 7)")
        raise ValueError("boom")

    def good(name: str):
        def fn(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO subscription_health (subscription, consecutive_failures) VALUES (?, 1)", (name,))
            return name
        return fn

    outcomes = await asyncio.gather(store._write(good("a")), store._write(bad), store._write(good("b")),
                                    return_exceptions=True)
    assert outcomes[0] == "a" and outcomes[2] == "b"
    assert isinstance(outcomes[1], ValueError)
    health = await store.endpoint_health()
    assert set(health) == {"a", "b"}  # "ghost" was rolled back with its transaction


async def test_a_sqlite_error_inside_a_transaction_becomes_store_error(store):
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(StoreError, match="no_such_table"):
        await store._write(broken)
    assert (await store.apply_update(ringing("CA1"), run_id="run-1")).created


class _FailingCommit:
    """A connection whose COMMIT fails, as on a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, *args):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, rows):
        return self._conn.executemany(sql, rows)


async def test_a_failed_commit_answers_every_member_with_the_error(store):
    real = store._wconn
    store._wconn = _FailingCommit(real)
    try:
        outcomes = await asyncio.gather(*[store.apply_update(ringing(f"CA{i}"), run_id=f"run-{i}") for i in range(5)],
                                        return_exceptions=True)
    finally:
        store._wconn = real
    assert all(isinstance(o, StoreError) and "disk is full" in str(o) for o in outcomes)
    assert await store.get_call("run-0") is None  # nothing acknowledged, nothing kept
    assert (await store.apply_update(ringing("CA9"), run_id="run-9")).created  # and the store goes on
