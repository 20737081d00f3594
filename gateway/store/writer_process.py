"""The SQLite store's busiest transactions, written from a process of their own.

Under load the gateway's event loop keeps the GIL busy (HTTP in and out, verification, the
delivery bookkeeping), and the SQLite writer thread gives the GIL up around every statement it
runs and must wait for it back each time: measured at 1,000 callbacks/s, the writer spent 62 %
of its time waiting for the GIL and 38 % working, and callbacks queued behind it. In a process
of its own it has its interpreter to itself.

`WriterProcessStore` is the `SQLiteStore` the gateway uses then. The transactions that every
callback and every delivery make (`apply_update`, `record_activity`, `claim_deliveries`,
`finish_deliveries`, `release_leases`) go to the writer process, which runs them in its own
`SQLiteStore` with the same group commit, fan-out and direct dispatch; everything else (reads,
the admin API's and campaigns' writes) runs here as before. Both write the same file, taking
turns on its write lock, so nothing is lost whichever process writes. What the writer process
leases to the direct dispatch comes back with the answer and is handed to this process's
worker; which subscriptions the worker takes is sent with each request.

When the writer process is not running (while it starts, after it died, before it is started
again), the transactions run here, in this process's own writer thread.

A writer that dies after a COMMIT but before its answer arrives leaves its caller with
`WriterGone` (a callback gets 503, as for any store failure), and the committed rows with leases
nobody here knows of. So every forwarded transaction that leases rows does so under a lease id
chosen here: when its answer is lost, this process releases that lease at once (the rows are
due again, and an ordered subscription's later events are not held back for a whole lease). A
finish batch whose answer was lost is written again by the worker; the store records each
attempt once.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from gateway.events.fanout import EventFanout, Route
from gateway.heap import settle_heap
from gateway.ipc import ChildProcess, serve_frames
from gateway.store.base import (
    Delivery,
    DeliveryResult,
    DirectDispatch,
    StoreError,
    StoreWiring,
    new_lease_id,
    no_fanout,
)
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_engine import Tx
from gateway.store.sqlite_events import Written

log = logging.getLogger("gateway.store")

REMOTE_METHODS = ("apply_update", "record_activity", "claim_deliveries", "finish_deliveries", "release_leases")
LEASING_METHODS = frozenset({"apply_update", "record_activity", "claim_deliveries", "finish_deliveries"})
"""Forwarded transactions that may lease rows: each is given its lease id (see the module)."""


class WriterGone(StoreError):
    """The writer process ended before it answered: whether the transaction committed is
    unknown, as for any store failure."""


class WriterProcessStore(SQLiteStore):
    """An `SQLiteStore` whose busiest transactions run in a writer process (see the module)."""

    def __init__(self, path: str, *, synchronous: str = "FULL", wiring: StoreWiring | None = None) -> None:
        super().__init__(path, synchronous=synchronous, wiring=wiring)
        self.writer: ChildProcess | None = None
        self._routing_sent: tuple[Any, Any] = (None, None)  # (the process told, what it was told)

    @property
    def routes(self) -> tuple[Route, ...] | None:
        """The fan-out's routes, from which the writer process rebuilds an `EventFanout`; None
        for a fan-out it cannot rebuild (then the transactions run here)."""
        if self.fanout is no_fanout:
            return ()
        routes = getattr(self.fanout, "routes", None)
        return tuple(routes) if routes is not None else None

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid while it runs."""
        return self.writer.pid if self.writer is not None else None

    async def open(self) -> None:
        await super().open()  # migrations, this process's reader and fallback writer
        main, setup = self.writer_target()
        self.writer = ChildProcess(
            "store writer process",
            main,
            (setup,),
            lost=lambda why: WriterGone(f"sqlite: the store writer process ended before it answered ({why})"),
        )
        self.writer.start()
        log.info("store writer process started: pid %s", self.writer.pid)

    def writer_target(self) -> tuple[Any, dict[str, Any]]:
        """The writer process's main and what it is started with (a test starts a faulty one)."""
        return run_writer, {"path": self.path, "synchronous": self.synchronous}

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.stop()  # it finishes the transactions it has, then exits
        await super().close()

    # -- the forwarded transactions ------------------------------------------------------
    def _routing(self) -> Any:
        """The fan-out and direct dispatch the writer process needs, when it has not had them
        yet (a new process, or they changed since): None otherwise."""
        dispatch = self.dispatch
        routing = (self.routes, dispatch.owner if dispatch else None, dispatch.lease_seconds if dispatch else 0.0)
        assert self.writer is not None
        if self._routing_sent[0] is self.writer.process and self._routing_sent[1] == routing:
            return None
        self._routing_sent = (self.writer.process, routing)
        return routing

    async def _forward(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        writer = self.writer
        if writer is None or not writer.up or self.routes is None:
            return await getattr(super(), method)(*args, **kwargs)  # no writer process (or it could not fan out): here
        dispatch = self.dispatch
        rooms = {r.name: dispatch.room(r.name) for r in self.routes} if dispatch else {}
        lease_id = new_lease_id() if method in LEASING_METHODS else None
        sent = {**kwargs, "lease_id": lease_id} if lease_id else kwargs
        try:
            ok, value, leased, queued = await writer.request((method, args, sent, rooms, self._routing()))
        except WriterGone:
            if lease_id is not None:
                await self._release_lost(lease_id)
            raise
        if not ok:
            raise value
        return self._notify(Written(value, queued, leased))

    async def _release_lost(self, lease_id: str) -> None:
        """The writer died before answering a transaction that may have committed leases under
        `lease_id`: release them here (nobody holds them), so they are due again at once."""
        try:
            released = await self._write(
                lambda conn: (
                    conn.execute(
                        "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, lease_id = NULL WHERE lease_id = ?",
                        (lease_id,),
                    ).rowcount
                )
            )
        except StoreError as exc:
            log.error("could not release the leases of a transaction whose answer was lost: %s (they expire)", exc)
            return
        if released:
            log.warning(
                "released %d delivery leases committed by the writer process before it died, unanswered", released
            )
            self.on_deliveries()

    async def apply_update(self, *args: Any, **kwargs: Any) -> Any:
        return await self._forward("apply_update", args, kwargs)

    async def record_activity(self, *args: Any, **kwargs: Any) -> Any:
        return await self._forward("record_activity", args, kwargs)

    async def claim_deliveries(self, *args: Any, **kwargs: Any) -> Any:
        return await self._forward("claim_deliveries", args, kwargs)

    async def finish_deliveries(self, owner: str, items: Sequence[tuple[Delivery, DeliveryResult]]) -> Any:
        # The writer needs the rows' keys, not their events: a third of what would be pickled.
        return await self._forward("finish_deliveries", (owner, [(replace(d, event=None), r) for d, r in items]), {})

    async def release_leases(self, *args: Any, **kwargs: Any) -> Any:
        return await self._forward("release_leases", args, kwargs)


# -- the writer process -------------------------------------------------------------------


def run_writer(setup: dict[str, Any], conn: Connection) -> None:
    """The writer process's main: run the transactions the gateway sends, a group commit per
    read of the pipe, until the pipe closes. One thread, no event loop: it reads, writes the
    group, answers, and reads again; what arrives meanwhile is the next group."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the gateway decides; its pipe closing ends this process
    store = SQLiteStore(setup["path"], synchronous=setup["synchronous"])
    rooms: dict[str, int] = {}  # how many rows of each subscription the worker takes, as the group's first request said
    store.open_here()
    settle_heap()

    def handle(requests: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        answers: list[tuple[int, Any]] = []
        for start in range(0, len(requests), SQLiteStore.MAX_GROUP):
            answers += _run(store, rooms, requests[start : start + SQLiteStore.MAX_GROUP])
        return answers

    serve_frames(conn, handle)
    store.close_here()
    os._exit(0)  # the pipe is gone: nothing left to tell anyone


def _route(store: SQLiteStore, rooms: dict[str, int], routing: Any) -> None:
    """Fan out and lease as the gateway's store would: `routing` is (routes, owner, lease seconds)."""
    routes, owner, lease_seconds = routing
    store.set_fanout(EventFanout(routes))
    store.set_dispatch(
        DirectDispatch(
            owner=owner, lease_seconds=lease_seconds, room=lambda name: rooms.get(name, 0), deliver=lambda rows: None
        )
        if owner
        else None
    )


def _run(store: SQLiteStore, rooms: dict[str, int], requests: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """One group commit of `requests`: each (token, (method, args, kwargs, rooms, routing));
    returns (token, (ok, value or error, rows leased, rows queued)) for each. The group leases as
    the worker's room was when the first request was sent: what the worker had room for then,
    less what the group leases (the later requests' room does not know of those yet)."""
    answers: list[tuple[int, Any]] = []
    fns: list[Tx] = []
    tokens: list[int] = []
    for token, (method, args, kwargs, room, routing) in requests:
        if routing is not None:
            _route(store, rooms, routing)
        try:
            if method not in REMOTE_METHODS:
                raise StoreError(f"{method} is not run by the writer process")
            fns.append(getattr(store, method + "_tx")(*args, **kwargs))
        except Exception as exc:
            answers.append((token, (False, _as_store_error(exc), [], 0)))
            continue
        if not tokens:
            rooms.clear()
            rooms.update(room)
        tokens.append(token)
    for token, (ok, value) in zip(tokens, store.run_locked(lambda: fns), strict=True):
        if ok:
            answers.append((token, (True, value.value, list(value.leased), value.queued)))
        else:
            answers.append((token, (False, _as_store_error(value), [], 0)))
    return answers


def _as_store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"sqlite: {exc}")
    return StoreError(f"sqlite: {type(exc).__name__}: {exc}")
