"""Callbacks that wait together for the SQLite writer are written as one batch (`_apply_batch`):
the same calls, timelines, events and deliveries as writing them one at a time, and when a
batch fails, each callback alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from batch_support import one_then_batched, script, snapshot
from gateway.events.fanout import EventFanout, Route
from gateway.store import SQLiteStore
from gateway.store.base import DirectDispatch


async def opened(path: Path, taken: list) -> SQLiteStore:
    store = SQLiteStore(str(path))
    store.set_fanout(EventFanout([Route("crm", ("call.*",)), Route("audit", ("call.ended",), ordered=False)]))
    store.set_dispatch(DirectDispatch(owner="w", lease_seconds=60, room=lambda name: 1000 if name == "crm" else 0, deliver=taken.extend))
    await store.open()
    return store


async def test_a_batch_writes_what_the_callbacks_write_one_at_a_time(tmp_path: Path) -> None:
    for seed in range(3):
        callbacks = script(seed)
        one_taken: list = []
        batch_taken: list = []
        one = await opened(tmp_path / f"one-{seed}.db", one_taken)
        batched = await opened(tmp_path / f"batch-{seed}.db", batch_taken)
        sizes: list[int] = []
        real = batched._apply_batch

        def counting(conn, items):
            sizes.append(len(items))
            return real(conn, items)

        batched._apply_batch = counting  # type: ignore[method-assign]
        try:
            await one_then_batched(one, batched, callbacks, one_taken, batch_taken)
            assert max(sizes) > 10  # they did wait together
            events = await batched.list_events(limit=500)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))  # the batch's own numbering
        finally:
            await one.close()
            await batched.close()


async def test_a_batch_that_fails_is_written_one_callback_at_a_time(tmp_path: Path) -> None:
    taken: list = []
    store = await opened(tmp_path / "gateway.db", taken)
    failures = []

    write_events = store._write_events

    def broken(conn, groups, **options):
        if len(groups) == 1:  # one callback alone: written as it is
            return write_events(conn, groups, **options)
        failures.append(len(groups))
        conn.execute("INSERT INTO events (seq, id, type, occurred_at, data) VALUES (1, 'x', 'x', 'x', '{}')")
        raise RuntimeError("the batch breaks after writing")

    store._write_events = broken  # type: ignore[method-assign]
    try:
        callbacks = script(7, n=40)
        applied = await asyncio.gather(*(store.apply_update(update, run_id=run) for update, run in callbacks))
        assert failures and max(failures) > 1  # a batch was tried and failed
        assert len(applied) == 40
        reference_taken: list = []
        reference = await opened(tmp_path / "reference.db", reference_taken)
        try:
            for update, run in callbacks:
                await reference.apply_update(update, run_id=run)
            assert await snapshot(store) == await snapshot(reference)  # nothing of the broken batch stayed
        finally:
            await reference.close()
    finally:
        await store.close()
