"""Group commit for a client-server store: transactions that wait together go as one.

A caller `submit`s a unit (one callback); up to `writers` batches are written at a time, and
whatever queued while they were busy goes in the next batch, one database transaction (one
commit, one fsync, a few round trips) for all of them. Each unit still gets its own answer,
and none is answered before the commit that makes it durable.

If a batch fails, its transaction was rolled back, so each unit of it is written again alone:
one bad callback cannot fail its neighbours. Only when the batch may have committed (the
connection was lost during its COMMIT) does every unit get the error instead; writing them
again could write them twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from gateway.errors import GatewayError

U = TypeVar("U")
R = TypeVar("R")


class MaybeCommitted(GatewayError):
    """A batch's COMMIT got no answer: it may have been written. Its units are not retried."""


class GroupCommit(Generic[U, R]):
    """A queue of units written in batches: `write_batch(units)` (one transaction, a result per
    unit, in order) for `min_batch` or more, `write_one(unit)` (its own transaction) for fewer
    and, one by one, after a batch failed. `write_batch` raises `MaybeCommitted` (its cause
    chained) when the batch's outcome is unknown."""

    def __init__(
        self,
        write_batch: Callable[[list[U]], Awaitable[list[R]]],
        write_one: Callable[[U], Awaitable[R]],
        *,
        writers: int = 2,
        max_group: int = 256,
        min_batch: int = 2,
    ) -> None:
        self.write_batch = write_batch
        self.write_one = write_one
        self.writers = writers
        self.max_group = max_group
        self.min_batch = min_batch
        self._queue: list[tuple[U, asyncio.Future[R]]] = []
        self._writing = 0  # writers at work: each one drains the queue before it stops
        self._running: set[asyncio.Task[None]] = set()  # their tasks, kept referenced

    async def submit(self, unit: U) -> R:
        """Queue `unit` and return its result once the transaction that wrote it committed."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((unit, future))
        if self._writing < self.writers:
            self._writing += 1
            task = asyncio.ensure_future(self._drain())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return await future

    async def _drain(self) -> None:
        """One writer: batches until the queue is empty. It stops counting as a writer in the
        same step that finds the queue empty, so a unit queued after that starts another."""
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_group], self._queue[self.max_group :]
                await self._write(batch)
        finally:
            self._writing -= 1

    async def _write(self, batch: list[tuple[U, asyncio.Future[R]]]) -> None:
        """Write `batch` and answer every caller of it, whatever goes wrong."""
        if len(batch) >= self.min_batch:
            try:
                results = await self.write_batch([unit for unit, _ in batch])
            except MaybeCommitted as exc:
                error = exc.__cause__ or exc
                for _, future in batch:
                    _fail(future, error)
                return
            except Exception:
                pass
            else:
                for (_, future), result in zip(batch, results, strict=False):
                    _settle(future, result)
                return
        for unit, future in batch:
            try:
                result = await self.write_one(unit)
            except Exception as exc:
                _fail(future, exc)
            else:
                _settle(future, result)

    async def drain(self) -> None:
        """Wait until every queued unit has been answered (before closing the connections)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)


def _settle(future: asyncio.Future[R], result: R) -> None:
    if not future.done():  # else its caller gave up (cancelled): the write stands
        future.set_result(result)


def _fail(future: asyncio.Future[R], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
