"""A media session's store writes: one ordered writer task per session, bounded, flushed at the end.

Writes reach the store in the order they were queued (a call's transcript stays in order, and
`media.ended` is last). The queue is bounded at `max_queued` writes, and nothing in it is ever
dropped:

- a write of a coalescable kind (`agent.context`, `agent.annotations`: dicts merged into the
  call) that finds the queue full merges into the last queued write when that one is of the
  same kind (counted in `coalesced`), so order is kept exactly;
- any other write from the agent's side waits for room (`put`): the agent's socket is read no
  faster than the store takes its writes (counted in `waited`);
- the session's own rare writes (`media.started`, DTMF, agent failures, `media.ended`) never
  wait and may pass the bound (`put_nowait`): the caller's audio path does not stall on the store.

`close` then `wait` flushes what is queued, with a deadline; every writer not yet flushed is
known to `flush_all`, which the app's shutdown awaits before it closes the store. What could not
be written by the deadline is logged, by kind.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from gateway.store.base import Store, StoreError

log = logging.getLogger("gateway.media")

COALESCABLE = {"agent.context": "gathered_context", "agent.annotations": "annotations"}
"""Kinds whose writes may merge (kind -> the payload's dict that merges); their data is the keys."""

FLUSH_SECONDS = 30.0
"""How long a session's end, and the app's shutdown, wait for queued writes before logging what is left."""

_unflushed: set[SessionWriter] = set()


class SessionWriter:
    """The ordered, bounded store writes of one media session (`run_id`)."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        *,
        source: Callable[[str], str],
        max_queued: int = 256,
        session: str | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.session = session  # the store's `media.session`: writes of a replaced session change nothing
        self.source = source
        self.max_queued = max(1, max_queued)
        self.coalesced = 0
        self.waited = 0
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False
        self._writing: str | None = None  # the kind being written now (out of the queue)
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        _unflushed.add(self)

    def put_nowait(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue a write now, never dropped (it may pass the bound)."""
        if self._closed:
            log.error("run=%s: %s queued after the session's writes were closed; not written", self.run_id, kind)
            return
        if len(self._queue) >= self.max_queued and self._merge(kind, payload):
            return
        self._queue.append((kind, payload))
        self._ready.set()

    async def put(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue a write, waiting while the queue is full (unless it can merge into the last one)."""
        if len(self._queue) >= self.max_queued and not self._mergeable(kind):
            self.waited += 1
            try:
                while len(self._queue) >= self.max_queued and not self._closed and not self._mergeable(kind):
                    self._room.clear()
                    await self._room.wait()
            except asyncio.CancelledError:  # the session is ending: what was read is still written
                self.put_nowait(kind, payload)
                raise
        self.put_nowait(kind, payload)

    def _mergeable(self, kind: str) -> bool:
        return kind in COALESCABLE and bool(self._queue) and self._queue[-1][0] == kind

    def _merge(self, kind: str, payload: dict[str, Any]) -> bool:
        if not self._mergeable(kind):
            return False
        field = COALESCABLE[kind]
        last = self._queue[-1][1]
        merged = {**(last.get(field) or {}), **(payload.get(field) or {})}
        self._queue[-1] = (kind, {**last, field: merged, "data": {"keys": sorted(merged)[:50]}})
        self.coalesced += 1
        return True

    def close(self) -> None:
        """No more writes: the writer ends once it has written what is queued."""
        self._closed = True
        self._ready.set()
        self._room.set()

    async def wait(self, deadline: float) -> bool:
        """Wait up to `deadline` seconds for the queued writes (after `close`). False, with the
        unwritten kinds logged, when some are left; the writer goes on (`flush_all` waits more)."""
        if self._task is None:
            return True
        await asyncio.wait({self._task}, timeout=deadline)  # a cancelled waiter leaves the writer running
        if self._task.done():
            return True
        log.error("run=%s: store writes not done after %.0f s: %s; still trying", self.run_id, deadline, self._left())
        return False

    def _left(self) -> str:
        left = Counter(kind for kind, _ in self._queue)
        if self._writing is not None:
            left[self._writing] += 1
        return ", ".join(f"{kind} x{n}" for kind, n in sorted(left.items()))

    def abandon(self) -> None:
        """Stop writing (the store is going away): what is left is logged and lost."""
        if self._task is not None and not self._task.done():
            log.error("run=%s: store writes not written before shutdown: %s", self.run_id, self._left())
            self._task.cancel()
        _unflushed.discard(self)

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closed:
                        return
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                kind, payload = self._queue.popleft()
                self._writing = kind
                self._room.set()
                try:
                    await self.store.record_activity(
                        self.run_id,
                        source=self.source(kind),
                        kind=kind,
                        data=payload.get("data", {}),
                        events=payload.get("events", ()),
                        gathered_context=payload.get("gathered_context"),
                        annotations=payload.get("annotations"),
                        media=payload.get("media"),
                        session=self.session,
                    )
                except StoreError as exc:
                    log.error("could not record %s for run=%s: %s", kind, self.run_id, exc)
                self._writing = None
        finally:
            _unflushed.discard(self)


async def flush_all(deadline: float) -> None:
    """At shutdown, before the store closes: let every session's queued writes finish within
    `deadline` seconds; what is still left then is logged and abandoned."""
    writers = list(_unflushed)
    for writer in writers:
        writer.close()
    tasks = {writer._task for writer in writers if writer._task is not None and not writer._task.done()}
    if tasks:
        log.info("writing what %d media sessions left queued", len(tasks))
        await asyncio.wait(tasks, timeout=deadline)
    for writer in writers:
        writer.abandon()
