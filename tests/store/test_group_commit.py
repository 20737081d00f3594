"""`GroupCommit`, the queue behind PostgreSQL's batched callbacks, on its own: units that wait
together go as one batch, a failed batch is written again one unit at a time, and a batch whose
COMMIT got no answer is not written again (that could write it twice)."""

from __future__ import annotations

import asyncio


from gateway.store.group_commit import GroupCommit, MaybeCommitted


class Recorder:
    """A stand-in database: records every batch and every unit written alone."""

    def __init__(self, fail_batches: BaseException | None = None, bad: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.alone: list[int] = []
        self.fail_batches = fail_batches
        self.bad = bad

    async def write_batch(self, units: list[int]) -> list[int]:
        await asyncio.sleep(0.01)  # a transaction takes a while: more units queue meanwhile
        self.batches.append(units)
        if self.fail_batches is not None:
            raise self.fail_batches
        if self.bad in units:
            raise ValueError("a bad unit fails its batch")
        return [unit * 10 for unit in units]

    async def write_one(self, unit: int) -> int:
        self.alone.append(unit)
        if unit == self.bad:
            raise ValueError(f"unit {unit} is bad")
        return unit * 10


async def test_a_unit_queued_as_the_last_writer_stops_is_written() -> None:
    """The writer that found the queue empty has stopped counting before the next unit is queued
    (a unit must never wait for a writer that is about to end)."""
    db = Recorder()
    group = GroupCommit(db.write_batch, db.write_one, writers=1)
    for round in range(3):
        first = asyncio.ensure_future(group.submit(round))
        await asyncio.sleep(0)
        assert await asyncio.wait_for(asyncio.gather(first, group.submit(100 + round)), 5) == [round * 10, (100 + round) * 10]


async def test_units_that_wait_together_go_in_one_batch() -> None:
    db = Recorder()
    group = GroupCommit(db.write_batch, db.write_one, writers=1)
    first = asyncio.ensure_future(group.submit(0))
    await asyncio.sleep(0)  # the first unit goes alone, at once
    results = await asyncio.gather(first, *(group.submit(i) for i in range(1, 40)))
    assert results == [i * 10 for i in range(40)]
    assert db.alone == [0]
    assert db.batches == [list(range(1, 40))]


async def test_min_batch_one_writes_a_lone_unit_as_a_batch() -> None:
    db = Recorder()
    group = GroupCommit(db.write_batch, db.write_one, writers=1, min_batch=1)
    assert await group.submit(5) == 50
    assert db.batches == [[5]] and db.alone == []


async def test_a_failed_batch_is_written_one_unit_at_a_time() -> None:
    db = Recorder(bad=7)
    group = GroupCommit(db.write_batch, db.write_one, writers=1)
    results = await asyncio.gather(*(group.submit(i) for i in range(20)), return_exceptions=True)
    assert isinstance(results[7], ValueError) and "unit 7" in str(results[7])
    assert [r for i, r in enumerate(results) if i != 7] == [i * 10 for i in range(20) if i != 7]
    assert any(7 in batch for batch in db.batches)
    assert sorted(db.alone) == sorted(set(db.alone)) and 7 in db.alone


async def test_a_batch_that_may_have_committed_is_not_written_again() -> None:
    cause = ConnectionResetError("the connection was lost during COMMIT")
    lost = MaybeCommitted()
    lost.__cause__ = cause
    db = Recorder(fail_batches=lost)
    group = GroupCommit(db.write_batch, db.write_one, writers=1)
    first = asyncio.ensure_future(group.submit(0))
    await asyncio.sleep(0)
    results = await asyncio.gather(first, *(group.submit(i) for i in range(1, 10)), return_exceptions=True)
    assert results[0] == 0
    assert all(r is cause for r in results[1:])  # every caller is told, none is written again
    assert db.alone == [0]


async def test_several_writers_and_a_cancelled_caller() -> None:
    db = Recorder()
    group = GroupCommit(db.write_batch, db.write_one, writers=2, max_group=8)
    waiting = [asyncio.ensure_future(group.submit(i)) for i in range(50)]
    await asyncio.sleep(0)  # every unit is queued
    waiting[3].cancel()  # its caller gave up: the others are answered, the unit is still written
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 3] == [i * 10 for i in range(50) if i != 3]
    assert max(len(b) for b in db.batches) <= 8
    written = sorted(db.alone + [u for b in db.batches for u in b])
    assert written == list(range(50))
    await group.drain()
    assert not group._running
