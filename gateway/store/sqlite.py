"""SQLite backend (WAL): one writer thread runs each transaction whole, one reader thread
serves queries. The event loop only awaits futures; it never touches the database.

Group commit: the writer takes every transaction queued while it was busy and runs them in one
SQLite transaction, each inside its own SAVEPOINT, then commits once. Each one is still atomic
(a failing one is rolled back to its savepoint, alone) and none is answered before the COMMIT
that makes it durable; they just share the commit, and so its fsync. Under load that turns one
fsync per callback, claim and finished attempt into one per batch.

Several processes may share the file (the gateway and its delivery processes, the CLI). Each
group takes an exclusive `flock` on `<path>.writelock` before `BEGIN IMMEDIATE` and drops it
after the COMMIT, and takes its transactions from the queue only once it holds the lock, so
that what queued up while another process wrote shares the next commit (and fsync) instead of
queueing for a lock of its own. A waiting writer is woken by the kernel the moment the lock is free, where
SQLite's own busy handler would sleep and poll (1, 2, 5, 10 ms...), which at hundreds of
commits a second costs most of the throughput. `busy_timeout` still covers a process that does
not take the lock. The kernel drops a dead process's lock; a live one stopped while it holds it
(SIGSTOP, a debugger) holds up every other writer until it goes on.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Container, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

from gateway import jsontext
from gateway.calls.lifecycle import CallUpdate
from gateway.calls.planner import TimelineWrite, UpdateItem, lookup_keys, plan_updates
from gateway.calls.record import CallRecord, utcnow
from gateway.calls.states import CallState
from gateway.events.envelope import Event, new_event_id
from gateway.store.activity import plan_activity
from gateway.store.base import (
    CALL_COLUMNS,
    CALL_JSON_FIELDS,
    CALL_TIME_FIELDS,
    NONCE_PRUNE_EVERY,
    AppliedUpdate,
    AttemptRecord,
    CallSeed,
    Delivery,
    DeliveryResult,
    DirectDispatch,
    EndpointHealth,
    HealthChange,
    Store,
    StoreError,
    TimelineEntry,
    claim_lost,
    clamp_limit,
    health_changes,
    late_attempt,
    new_lease_id,
    share_out,
)
from gateway.store.migrations import MIGRATIONS
from gateway.store.paging import SQLITE, page_query, split_page
from gateway.store.sqlite_campaigns import SQLiteCampaigns

T = TypeVar("T")
Transaction = Callable[[sqlite3.Connection], tuple[Any, int, list[Delivery]]]
"""A hot write transaction, run whole on the writer: (its value, delivery rows it queued for a
claim, rows it leased to the direct dispatch). `_notify` hands the last two on after the commit."""


@lru_cache(maxsize=1024)
def _ts(value: datetime | None) -> str | None:
    """Stored time text (UTC, microseconds). Cached: one transaction writes the same `now` into
    several columns and rows, and formatting costs ~2 us each time."""
    if value is None:
        return None
    if value.tzinfo is not UTC:  # every time the gateway makes is already aware UTC
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _dumps(value: Any) -> str:
    if not value and isinstance(value, dict):
        return "{}"
    return jsontext.dumps(value)


def _check_claim(conn: sqlite3.Connection, claim: tuple[str, int], run_id: str | None) -> None:
    """`ClaimLost` unless the contact `claim` names is still dialing `run_id` (see `CallSeed.claim`)."""
    if (
        conn.execute(
            "SELECT 1 FROM campaign_contacts WHERE campaign_id = ? AND position = ? AND status = 'dialing'"
            " AND workflow_run_id = ?",
            (claim[0], claim[1], run_id),
        ).fetchone()
        is None
    ):
        raise claim_lost(claim, run_id)


_INSERT_TIMELINE = (
    "INSERT INTO call_timeline (workflow_run_id, received_at, source, kind, outcome, raw_status, state, sequence, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_timeline(conn: sqlite3.Connection, entries: Sequence[TimelineWrite]) -> None:
    """Write timeline entries, in order."""
    conn.executemany(
        _INSERT_TIMELINE,
        [
            (
                e.run_id,
                _ts(e.received_at),
                e.source,
                e.kind,
                e.outcome,
                e.raw_status,
                e.state,
                e.sequence,
                _dumps(e.data),
            )
            for e in entries
        ],
    )


def _row_to_record(row: sqlite3.Row) -> CallRecord:
    values = dict(row)
    for name in CALL_TIME_FIELDS:
        values[name] = _parse_ts(values[name])
    for name in CALL_JSON_FIELDS:
        text = values[name]
        values[name] = {} if text == "{}" else jsontext.loads(text)
    values["state"] = CallState(values["state"])
    values["voicemail"] = bool(values["voicemail"])
    return CallRecord(**values)


_CALL_VALUES = attrgetter(*CALL_COLUMNS)
_TIME_AT = tuple(CALL_COLUMNS.index(name) for name in CALL_TIME_FIELDS)
_JSON_AT = tuple(CALL_COLUMNS.index(name) for name in CALL_JSON_FIELDS)
_STATE_AT = CALL_COLUMNS.index("state")
_VOICEMAIL_AT = CALL_COLUMNS.index("voicemail")


def _record_params(record: CallRecord) -> list[Any]:
    """The `calls` row of a record, in `CALL_COLUMNS` order."""
    values = list(_CALL_VALUES(record))
    for at in _TIME_AT:
        values[at] = _ts(values[at])
    for at in _JSON_AT:
        values[at] = _dumps(values[at])
    values[_STATE_AT] = values[_STATE_AT].value
    values[_VOICEMAIL_AT] = int(values[_VOICEMAIL_AT])
    return values


_DELIVERY_COLUMNS = (
    "SELECT d.*, e.id AS e_id, e.type AS e_type, e.workflow_run_id AS e_run, e.occurred_at AS e_at,"
    " e.data AS e_data, e.seq AS e_seq"
)
_DELIVERY_SELECT = _DELIVERY_COLUMNS + " FROM deliveries d JOIN events e ON e.seq = d.event_seq"
"""A delivery row with its event's columns (`e_*`), as `_row_to_delivery(..., with_event=True)` reads it."""
_DELIVERY_VIEW = (
    _DELIVERY_COLUMNS + ", (SELECT MIN(a.attempted_at) FROM delivery_attempts a WHERE a.delivery_id = d.id)"
    " AS first_attempted FROM deliveries d JOIN events e ON e.seq = d.event_seq"
)
"""`_DELIVERY_SELECT` with the very first attempt's time, for the listings people read."""

_INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, event_seq, subscription, workflow_run_id, order_key, status, attempts,"
    " next_attempt_at, lease_owner, lease_until, lease_id, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?)"
)
"""A pending delivery row: (id, event seq, subscription, run, order key, due at, lease owner,
lease until, lease id, created at, updated at)."""

_LEASE = "lease_owner = ?, lease_until = ?, lease_id = ?, resend = 0"
"""Hand a row out under a new lease (owner, until, id); a retry asked for before is met by it."""

_MARK_RESEND = (
    "UPDATE deliveries SET resend = 1, updated_at = ? WHERE id = ? AND status = 'pending'"
    " AND lease_owner IS NOT NULL AND lease_until >= ?"
)
"""A retry or replay of a row whose attempt is in flight: (updated at, id, the store's now)."""

_RESET = (
    "UPDATE deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL, next_attempt_at = ?,"
    " lease_owner = NULL, lease_until = NULL, lease_id = NULL, resend = 0, updated_at = ? WHERE id = ?"
)
"""A retry or replay of a row not in flight: due at once, its schedule afresh (due at, updated at, id)."""

_UPSERT_CALL = (
    f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' for _ in CALL_COLUMNS)}) "
    "ON CONFLICT (workflow_run_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in CALL_COLUMNS if c != "workflow_run_id")
)


class SQLiteStore(SQLiteCampaigns, Store):
    """The embedded default store."""

    MAX_GROUP = 256  # transactions per group commit

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._queued: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._queued_lock = threading.Lock()
        self._drain_scheduled = False
        self._lock_fd: int | None = None  # the cross-process write lock, see the module docstring
        self._leases: dict[str, int] = {}  # rows leased to the direct dispatch in this group, by subscription
        self._nonces_pruned: datetime | None = None

    # -- plumbing ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        # Each transaction of a group commit runs in a savepoint, whose journal of the pages it
        # changed would otherwise go to a temporary file: a write() per page, in memory now.
        # Measured on the callback's transaction in a tight loop: 97 against 157 us.
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a write transaction on the writer thread; return once it is committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._queued_lock:
            self._queued.append((fn, future))
            schedule = not self._drain_scheduled
            self._drain_scheduled = True
        if schedule:
            try:
                self._writer.submit(self._drain)
            except RuntimeError:  # the executor is shut down
                with self._queued_lock:
                    self._queued.clear()
                    self._drain_scheduled = False
                raise StoreError("store is closed") from None
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    def _drain(self) -> None:
        """Writer thread: take the write lock, then everything queued by then, run it as one
        group, and answer each caller. Taking the batch after the lock means that the longer
        another process held the lock, the more this group carries into its one commit."""
        batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []

        def take() -> list[Callable[[sqlite3.Connection], Any]]:
            with self._queued_lock:
                batch.extend(self._queued[: self.MAX_GROUP])
                del self._queued[: self.MAX_GROUP]
                if self._queued:
                    self._writer.submit(self._drain)  # the rest, after this group
                else:
                    self._drain_scheduled = False
            return [fn for fn, _ in batch]

        outcomes = self.run_locked(take)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, future), (ok, value) in zip(batch, outcomes):
            by_loop.setdefault(future.get_loop(), []).append((future, ok, value))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, answers)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def run_locked(self, take: Callable[[], list[Callable[[sqlite3.Connection], Any]]]) -> list[tuple[bool, Any]]:
        """On the writer's thread: take the cross-process write lock, then the transactions
        (`take()`, called once the lock is held), run them as one group commit, drop the lock.
        Returns (ok, value or exception) per transaction."""
        lock_fd = self._lock_fd if self._wconn is not None else None
        lock_error: StoreError | None = None
        if lock_fd is not None:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            except OSError as exc:  # answered like a failed BEGIN: nobody is left waiting
                lock_error = StoreError(f"sqlite: cannot take the write lock {self.path}.writelock: {exc}")
                lock_fd = None
        try:
            fns = take()
            if lock_error is not None:
                return [(False, lock_error)] * len(fns)
            self._leases = {}
            return self._run_group(fns) if fns else []
        finally:
            if lock_fd is not None:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
                except OSError:  # the outcomes stand; the kernel drops the lock with the descriptor
                    pass

    def _run_group(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        """Run each `fn` in its own savepoint inside one transaction; commit once.

        Returns (ok, result-or-exception) per fn. A fn that raises is rolled back alone. If
        SQLite itself ends the transaction (an I/O error, a full disk) or the COMMIT fails,
        every fn of the group that had succeeded is answered with that error: its writes are
        gone, so it must not be acknowledged.
        """
        conn = self._wconn
        if conn is None:
            return [(False, StoreError("store is closed"))] * len(fns)
        outcomes: list[tuple[bool, Any]] = []
        done: list[int] = []  # indexes whose writes sit in the open transaction

        def fail_done(exc: BaseException) -> None:
            for index in done:
                outcomes[index] = (False, exc)
            done.clear()

        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(False, exc)] * len(fns)
        single = len(fns) == 1
        for unit in _units(fns):
            if len(unit) > 1:
                runner = unit[0].batch[0]  # type: ignore[attr-defined]
                try:
                    conn.execute("SAVEPOINT batch")
                    values = runner(conn, [fn.batch[1] for fn in unit])  # type: ignore[attr-defined]
                    conn.execute("RELEASE batch")
                except BaseException as exc:
                    _undo(conn, "batch", exc, fail_done)
                else:
                    for value in values:
                        done.append(len(outcomes))
                        outcomes.append((True, value))
                    continue
            self._run_each(conn, unit, single, outcomes, done, fail_done)
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                fail_done(exc)
        return outcomes

    @staticmethod
    def _run_each(
        conn: sqlite3.Connection,
        fns: list[Callable[[sqlite3.Connection], Any]],
        single: bool,
        outcomes: list[tuple[bool, Any]],
        done: list[int],
        fail_done: Callable[[BaseException], None],
    ) -> None:
        """`_run_group`'s transactions one at a time, each in its own savepoint."""
        for fn in fns:
            if not conn.in_transaction:  # a previous failure ended the transaction
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    outcomes.append((False, exc))
                    continue
            try:
                if not single:
                    conn.execute("SAVEPOINT tx")
                value = fn(conn)
                if not single:
                    conn.execute("RELEASE tx")
            except BaseException as exc:
                outcomes.append((False, exc))
                _undo(conn, None if single else "tx", exc, fail_done)
                continue
            done.append(len(outcomes))
            outcomes.append((True, value))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._rconn is None:
                raise StoreError("store is closed")
            return fn(self._rconn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, run)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.path != ":memory:":
                self._lock_fd = os.open(self.path + ".writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._wconn = await loop.run_in_executor(self._writer, self._connect)
            await self._write(self._migrate)
            self._rconn = await loop.run_in_executor(self._reader, self._connect)
        except (sqlite3.Error, OSError, StoreError) as exc:
            await self.close()
            raise StoreError(f"cannot open sqlite database {self.path}: {exc}") from exc

    def open_here(self) -> None:
        """`open()` for a process whose one thread is the writer (`writer_process`): connect and
        migrate on the calling thread; the async methods are not used then."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path + ".writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._wconn = self._connect()
        ((ok, error),) = self.run_locked(lambda: [self._migrate])
        if not ok:
            raise StoreError(f"cannot open sqlite database {self.path}: {error}")

    def close_here(self) -> None:
        """`close()` of `open_here()`."""
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._writer.shutdown(wait=False)
        self._reader.shutdown(wait=False)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.sqlite.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, _ts(utcnow())),
            )

    async def close(self) -> None:
        loop = asyncio.get_running_loop()

        def close_writer() -> None:  # on the writer thread: no group can be holding the lock now
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None
            lock_fd, self._lock_fd = self._lock_fd, None
            if lock_fd is not None:
                os.close(lock_fd)

        try:
            await loop.run_in_executor(self._writer, close_writer)
        except RuntimeError:  # the executor is already shut down (closed twice)
            pass
        if self._rconn is not None:
            await loop.run_in_executor(self._reader, self._rconn.close)
        self._rconn = None
        self._writer.shutdown(wait=False)
        self._reader.shutdown(wait=False)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- writes -----------------------------------------------------------------------
    @staticmethod
    def _load(conn: sqlite3.Connection, run_id: str) -> CallRecord | None:
        row = conn.execute("SELECT * FROM calls WHERE workflow_run_id = ?", (run_id,)).fetchone()
        return None if row is None else _row_to_record(row)

    def _has_room(self, dispatch: DirectDispatch, subscription: str) -> bool:
        """Whether the direct dispatch takes one more row of `subscription`, counting the rows
        this group commit leased it already (it gets them only after the commit)."""
        return dispatch.room(subscription) > self._leases.get(subscription, 0)

    def _insert_events(
        self,
        conn: sqlite3.Connection,
        events: list[Event],
        leased: list[Delivery] | None = None,
        lease_id: str | None = None,
    ) -> int:
        """Write events and, in the same transaction, one delivery row per subscription; returns
        how many rows wait for a claim. Given a `leased` list, the rows the direct dispatch takes
        are leased to it (under `lease_id`) and added there (see `_write_events`)."""
        ((queued, taken),) = self._write_events(
            conn, [events], lease=leased is not None, lease_ids=[lease_id or new_lease_id()]
        )
        if leased is not None:
            leased += taken
        return queued

    def _write_events(
        self,
        conn: sqlite3.Connection,
        groups: Sequence[Sequence[Event]],
        *,
        lease: bool,
        lease_ids: Sequence[str],
        new_calls: Container[str] = (),
    ) -> list[tuple[int, list[Delivery]]]:
        """Write the events of each group (one transaction's, in order) and one delivery row per
        subscription, one statement per table; returns (rows queued for a claim, rows leased)
        per group.

        With `lease`, a row the direct dispatch takes (it has room for the subscription, and no
        earlier event of the call is still pending for it) is leased to it, under the group's
        lease id (`lease_ids`, one per group: a writer process's caller that never gets the
        answer releases that lease by its id). Sequence numbers are
        given here: the writer holds the write lock. `new_calls` are calls these groups made,
        which cannot have deliveries pending from before (no need to look)."""
        if not any(groups):
            return [(0, []) for _ in groups]
        dispatch = self.dispatch if lease else None
        lease_until = _ts(utcnow() + timedelta(seconds=dispatch.lease_seconds)) if dispatch is not None else None
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        event_rows: list[tuple[Any, ...]] = []
        delivery_rows: list[tuple[Any, ...]] = []
        waiting: set[tuple[str, str]] = set()  # (subscription, call) that has a pending row now
        out: list[tuple[int, list[Delivery]]] = []
        for events, lease_id in zip(groups, lease_ids):
            queued, leased = 0, []
            for event in events:
                seq += 1
                event.seq = seq
                run, at = event.workflow_run_id, _ts(event.occurred_at)
                event_rows.append((seq, event.id, event.type, run, at, event.data_json()))
                for subscription, ordered in self.fanout(event):
                    key = run if ordered else None
                    take = dispatch is not None and self._has_room(dispatch, subscription)
                    if key is not None:
                        if take and (
                            (subscription, key) in waiting
                            or (key not in new_calls and _has_pending(conn, subscription, key))
                        ):
                            take = False
                        waiting.add((subscription, key))
                    delivery_id = new_event_id("msg")
                    if take:
                        assert dispatch is not None
                        self._leases[subscription] = self._leases.get(subscription, 0) + 1
                        delivery_rows.append(
                            (
                                delivery_id,
                                seq,
                                subscription,
                                run,
                                key,
                                at,
                                dispatch.owner,
                                lease_until,
                                lease_id,
                                at,
                                at,
                            )
                        )
                        leased.append(
                            Delivery(
                                id=delivery_id,
                                event_seq=seq,
                                subscription=subscription,
                                workflow_run_id=run,
                                status="pending",
                                attempts=0,
                                next_attempt_at=event.occurred_at,
                                created_at=event.occurred_at,
                                updated_at=event.occurred_at,
                                event=event,
                                order_key=key,
                                lease_id=lease_id,
                            )
                        )
                    else:
                        delivery_rows.append((delivery_id, seq, subscription, run, key, at, None, None, None, at, at))
                        queued += 1
            out.append((queued, leased))
        conn.executemany(
            "INSERT INTO events (seq, id, type, workflow_run_id, occurred_at, data) VALUES (?, ?, ?, ?, ?, ?)",
            event_rows,
        )
        conn.executemany(_INSERT_DELIVERY, delivery_rows)
        return out

    @staticmethod
    def _insert_delivery(
        conn: sqlite3.Connection, event_seq: int, subscription: str, run_id: str | None, ordered: bool, now: datetime
    ) -> None:
        """A pending delivery row, for a claim."""
        at = _ts(now)
        conn.execute(
            _INSERT_DELIVERY,
            (
                new_event_id("msg"),
                event_seq,
                subscription,
                run_id,
                run_id if ordered else None,
                at,
                None,
                None,
                None,
                at,
                at,
            ),
        )

    async def apply_update(
        self, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None
    ) -> AppliedUpdate:
        return self._notify(await self._write(self.apply_update_tx(update, run_id=run_id, seed=seed)))

    def apply_update_tx(
        self, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None, lease_id: str | None = None
    ) -> Transaction:
        """`apply_update`'s transaction: (AppliedUpdate, rows queued, rows leased). Callbacks that
        wait together are written as one batch (`_apply_batch`); a campaign dial's, whose claim
        is checked, alone. Rows leased to the direct dispatch carry `lease_id` (a fresh one when
        None)."""
        item = (UpdateItem(update, run_id, seed), lease_id or new_lease_id())

        def tx(conn: sqlite3.Connection) -> tuple[AppliedUpdate, int, list[Delivery]]:
            return self._apply_batch(conn, [item])[0]

        if seed is None or seed.claim is None:  # a campaign dial's claim is checked alone
            tx.batch = (self._apply_batch, item)  # type: ignore[attr-defined]
        return tx

    def _apply_batch(
        self, conn: sqlite3.Connection, items: list[tuple[UpdateItem, str]]
    ) -> list[tuple[AppliedUpdate, int, list[Delivery]]]:
        """Several `apply_update` transactions (update item, lease id), in order, written
        together: what each would have written alone (`plan_updates`), with one query per key
        to find the calls and one statement per table for all their rows (a callback's own
        statements and savepoint cost more than its rows).

        A later callback sees what an earlier one of the batch did to its call. The caller runs
        the batch in one savepoint and, if it fails, each callback alone."""
        now = utcnow()
        updates = [update for update, _ in items]
        runs, _ = lookup_keys(updates)
        found: dict[str, CallRecord] = {}
        for start in range(0, len(runs), 500):
            part = runs[start : start + 500]
            for row in conn.execute(
                f"SELECT * FROM calls WHERE workflow_run_id IN ({','.join('?' * len(part))})", part
            ):
                found[row["workflow_run_id"]] = _row_to_record(row)
        ids: dict[str, list[str]] = {}  # the provider's call ids of the callbacks whose run was not found
        for update, run_id, _ in updates:
            if update.provider_call_id and not (run_id and run_id in found):
                ids.setdefault(update.provider, []).append(update.provider_call_id)
        for provider, call_ids in ids.items():
            unique = list(dict.fromkeys(call_ids))
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                for row in conn.execute(
                    f"SELECT * FROM calls WHERE provider = ? AND provider_call_id IN ({','.join('?' * len(part))})",
                    [provider, *part],
                ):
                    found.setdefault(row["workflow_run_id"], _row_to_record(row))
        plan = plan_updates(updates, found.values(), now=now)
        for item, applied in zip(updates, plan.applied):
            if applied.created and item.seed is not None and item.seed.claim is not None:
                _check_claim(conn, item.seed.claim, item.run_id)
        conn.executemany(_UPSERT_CALL, [_record_params(record) for record in plan.changed.values()])
        _insert_timeline(conn, plan.timeline)
        written = self._write_events(
            conn, plan.events, lease=True, lease_ids=[lease_id for _, lease_id in items], new_calls=plan.created
        )
        return [(applied, queued, leased) for applied, (queued, leased) in zip(plan.applied, written)]

    def _notify(self, result: tuple[Any, ...]) -> Any:
        """After a commit: hand rows leased to the direct dispatch over, and wake the claimers
        when rows were queued for them. `result` is (value, queued) or (value, queued, leased)."""
        if len(result) == 3 and result[2]:
            assert self.dispatch is not None
            self.dispatch.deliver(result[2])
        if result[1]:
            self.on_deliveries()
        return result[0]

    async def record_activity(self, run_id: str, **fields: Any) -> list[Event]:
        """See `Store.record_activity` (the keyword fields are `record_activity_tx`'s)."""
        return self._notify(await self._write(self.record_activity_tx(run_id, **fields)))

    def record_activity_tx(
        self,
        run_id: str,
        *,
        source: str,
        kind: str,
        data: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]] = (),
        gathered_context: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
        media: dict[str, Any] | None = None,
        lease_id: str | None = None,
        session: str | None = None,
    ) -> Transaction:
        """`record_activity`'s transaction: (events, rows queued, rows leased under `lease_id`)."""

        def tx(conn: sqlite3.Connection) -> tuple[list[Event], int, list[Delivery]]:
            now = utcnow()
            record = self._load(conn, run_id)
            if record is None:
                raise StoreError(f"unknown workflow_run_id {run_id!r}")
            plan = plan_activity(
                record,
                source=source,
                kind=kind,
                data=data,
                now=now,
                session=session,
                events=events,
                gathered_context=gathered_context,
                annotations=annotations,
                media=media,
            )
            if plan is None:
                return [], 0, []
            if plan.record is not None:
                conn.execute(_UPSERT_CALL, _record_params(plan.record))
            _insert_timeline(conn, [plan.timeline])
            leased: list[Delivery] = []
            return plan.events, self._insert_events(conn, plan.events, leased, lease_id), leased

        return tx

    async def claim_nonce(self, nonce: str, *, expires_at: datetime, now: datetime) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            at = _ts(now)
            if self._nonces_pruned is None or now - self._nonces_pruned >= NONCE_PRUNE_EVERY:
                conn.execute("DELETE FROM seen_nonces WHERE expires_at < ?", (at,))
                self._nonces_pruned = now
            return (
                conn.execute(
                    "INSERT INTO seen_nonces (nonce, expires_at) VALUES (?, ?) ON CONFLICT (nonce) DO UPDATE"
                    " SET expires_at = excluded.expires_at WHERE seen_nonces.expires_at < ?",
                    (nonce, _ts(expires_at), at),
                ).rowcount
                == 1
            )

        return await self._write(tx)

    # -- reads ------------------------------------------------------------------------
    async def get_call(self, run_id: str) -> CallRecord | None:
        return await self._read(lambda conn: self._load(conn, run_id))

    async def get_timeline(self, run_id: str) -> list[TimelineEntry]:
        def query(conn: sqlite3.Connection) -> list[TimelineEntry]:
            rows = conn.execute(
                "SELECT * FROM call_timeline WHERE workflow_run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
            return [
                TimelineEntry(
                    id=row["id"],
                    received_at=_parse_ts(row["received_at"]),
                    source=row["source"],
                    kind=row["kind"],
                    outcome=row["outcome"],
                    raw_status=row["raw_status"],
                    state=row["state"],
                    sequence=row["sequence"],
                    data=jsontext.loads(row["data"]),
                )
                for row in rows
            ]

        return await self._read(query)

    async def list_calls(
        self, *, state: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[CallRecord], str | None]:
        limit = clamp_limit(limit)
        sql, params = page_query(
            "SELECT * FROM calls",
            [("state", state)],
            keys=("created_at", "workflow_run_id"),
            cursor=cursor,
            limit=limit,
            dialect=SQLITE,
        )

        def query(conn: sqlite3.Connection) -> tuple[list[CallRecord], str | None]:
            rows, next_cursor = split_page(
                conn.execute(sql, params).fetchall(), limit, key="workflow_run_id", dialect=SQLITE
            )
            return [_row_to_record(row) for row in rows], next_cursor

        return await self._read(query)

    async def list_events(self, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None) -> list[Event]:
        def query(conn: sqlite3.Connection) -> list[Event]:
            sql, params = "SELECT * FROM events WHERE seq > ?", [after_seq]
            if run_id is not None:
                sql += " AND workflow_run_id = ?"
                params.append(run_id)
            sql += " ORDER BY seq LIMIT ?"
            params.append(clamp_limit(limit))
            return [_row_to_event(row) for row in conn.execute(sql, params).fetchall()]

        return await self._read(query)

    # -- deliveries -----------------------------------------------------------------------
    async def claim_deliveries(
        self, owner: str, *, now: datetime, lease_seconds: float, capacity: Mapping[str, int], limit: int = 200
    ) -> list[Delivery]:
        if not any(n > 0 for n in capacity.values()):
            return []
        return self._notify(
            await self._write(
                self.claim_deliveries_tx(owner, now=now, lease_seconds=lease_seconds, capacity=capacity, limit=limit)
            )
        )

    def claim_deliveries_tx(
        self,
        owner: str,
        *,
        now: datetime,
        lease_seconds: float,
        capacity: Mapping[str, int],
        limit: int = 200,
        lease_id: str | None = None,
    ) -> Transaction:
        """`claim_deliveries`'s transaction: (the claimed deliveries, 0, [])."""
        wanted = {name: n for name, n in capacity.items() if n > 0}
        due = _ts(now)
        lease_id = lease_id or new_lease_id()

        def tx(conn: sqlite3.Connection) -> tuple[list[Delivery], int, list[Delivery]]:
            clock = utcnow()  # leases run on the store's clock, whatever the caller's says
            at, until = _ts(clock), _ts(clock + timedelta(seconds=lease_seconds))
            found: dict[str, list[sqlite3.Row]] = {}
            for subscription, n in wanted.items():
                # Walk the due index in time order and stop at `room` rows: the cost follows
                # what is claimed (plus rows leased or waiting behind an earlier event of the
                # same call), not the size of the backlog. Equal times keep insertion order.
                found[subscription] = conn.execute(
                    _DELIVERY_COLUMNS + " FROM deliveries d INDEXED BY deliveries_due"
                    " JOIN events e ON e.seq = d.event_seq"
                    " WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until < ?)"
                    " AND d.subscription = ?"
                    " AND (d.order_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending'"
                    " AND p.subscription = d.subscription AND p.order_key = d.order_key AND p.event_seq < d.event_seq))"
                    " ORDER BY d.next_attempt_at LIMIT ?",
                    (due, at, subscription, min(n, limit)),
                ).fetchall()
            picked = share_out(found, limit)
            conn.executemany(
                f"UPDATE deliveries SET {_LEASE} WHERE id = ?", [(owner, until, lease_id, row["id"]) for row in picked]
            )
            claimed = [_row_to_delivery(row, with_event=True) for row in picked]
            for delivery in claimed:
                delivery.lease_id = lease_id
            return claimed, 0, []

        return tx

    async def finish_deliveries(
        self, owner: str, items: Sequence[tuple[Delivery, DeliveryResult]]
    ) -> list[EndpointHealth | None]:
        if not items:
            return []
        return self._notify(await self._write(self.finish_deliveries_tx(owner, items)))

    def finish_deliveries_tx(
        self, owner: str, items: Sequence[tuple[Delivery, DeliveryResult]], lease_id: str | None = None
    ) -> Transaction:
        """`finish_deliveries`'s transaction: (healths, successors queued, successors leased
        under `lease_id`)."""
        dispatch = self.dispatch if self.dispatch is not None and self.dispatch.owner == owner else None
        lease_id = lease_id or new_lease_id()

        def tx(conn: sqlite3.Connection) -> tuple[list[EndpointHealth | None], int, list[Delivery]]:
            now = _ts(utcnow())
            recorded = _recorded_attempts(conn, [result.attempt.id for _, result in items])
            attempts: list[tuple[Any, ...]] = []
            moved: list[tuple[Delivery, DeliveryResult]] = []  # finished under their lease, with the status they took
            late: set[int] = set()
            for index, (delivery, result) in enumerate(items):
                attempt = result.attempt
                if attempt.id in recorded:
                    continue  # written before (its batch's answer was lost): once is enough
                recorded.add(attempt.id)
                at = _ts(attempt.attempted_at)
                row = conn.execute(
                    "UPDATE deliveries SET status = CASE WHEN resend THEN 'pending' ELSE ? END,"
                    " attempts = CASE WHEN resend THEN 0 ELSE attempts + 1 END,"
                    " next_attempt_at = CASE WHEN resend THEN ? ELSE COALESCE(?, next_attempt_at) END,"
                    " first_attempt_at = CASE WHEN resend THEN NULL ELSE COALESCE(first_attempt_at, ?) END,"
                    " resend = 0, lease_owner = NULL, lease_until = NULL, lease_id = NULL,"
                    " last_attempt_at = ?, last_status = ?, last_error = ?, updated_at = ?"
                    " WHERE id = ? AND status = 'pending' AND lease_owner = ? AND lease_id = ? RETURNING status",
                    (
                        result.status,
                        now,
                        _ts(result.next_attempt_at),
                        at,
                        at,
                        attempt.status,
                        attempt.error,
                        at,
                        delivery.id,
                        owner,
                        delivery.lease_id,
                    ),
                ).fetchone()
                if row is None:
                    late.add(index)
                    attempt = late_attempt(attempt)
                else:
                    moved.append((delivery, result if row[0] == result.status else replace(result, status=row[0])))
                attempts.append(
                    (
                        delivery.id,
                        attempt.id,
                        at,
                        attempt.outcome,
                        attempt.status,
                        attempt.latency_ms,
                        attempt.error,
                        attempt.response,
                        _dumps(attempt.request),
                    )
                )
            conn.executemany(
                "INSERT INTO delivery_attempts (delivery_id, attempt_id, attempted_at, outcome, status, latency_ms, error,"
                " response, request) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                attempts,
            )
            for delivery, result in moved:
                if result.gathered_context and delivery.workflow_run_id:
                    record = self._load(conn, delivery.workflow_run_id)
                    if record is not None:
                        record.gathered_context.update(result.gathered_context)
                        record.updated_at = result.attempt.attempted_at
                        conn.execute(_UPSERT_CALL, _record_params(record))
            for change in health_changes(moved):
                _apply_health_change(conn, change)
            health = {
                name: _row_to_health(row)
                if (row := conn.execute("SELECT * FROM subscription_health WHERE subscription = ?", (name,)).fetchone())
                else EndpointHealth(name)
                for name in {delivery.subscription for delivery, _ in items}
            }
            queued, leased = self._next_in_order(conn, moved, dispatch, lease_id)
            return (
                [None if index in late else health[delivery.subscription] for index, (delivery, _) in enumerate(items)],
                queued,
                leased,
            )

        return tx

    def _next_in_order(
        self,
        conn: sqlite3.Connection,
        items: Sequence[tuple[Delivery, DeliveryResult]],
        dispatch: DirectDispatch | None,
        lease_id: str,
    ) -> tuple[int, list[Delivery]]:
        """The call's next pending delivery after each ordered one that reached its end: leased
        to `dispatch` (under `lease_id`) when it is due, free and taken; else counted, so that
        claimers wake."""
        queued, leased = 0, []
        now = utcnow()
        at = _ts(now)
        for delivery, result in items:
            if result.status == "pending" or delivery.order_key is None:
                continue
            row = conn.execute(
                _DELIVERY_SELECT + " WHERE d.status = 'pending' AND d.subscription = ? AND d.order_key = ?"
                " ORDER BY d.event_seq LIMIT 1",
                (delivery.subscription, delivery.order_key),
            ).fetchone()
            if (
                row is None
                or row["next_attempt_at"] > at
                or (row["lease_until"] is not None and row["lease_until"] >= at)
            ):
                continue  # nothing waits, or it is not due yet (a claim or the poll takes it then)
            if dispatch is not None and self._has_room(dispatch, delivery.subscription):
                self._leases[delivery.subscription] = self._leases.get(delivery.subscription, 0) + 1
                conn.execute(
                    f"UPDATE deliveries SET {_LEASE} WHERE id = ?",
                    (dispatch.owner, _ts(now + timedelta(seconds=dispatch.lease_seconds)), lease_id, row["id"]),
                )
                successor = _row_to_delivery(row, with_event=True)
                successor.lease_id = lease_id
                leased.append(successor)
            else:
                queued += 1
        return queued, leased

    async def release_leases(self, owner: str, delivery_ids: Sequence[str] | None = None) -> int:
        return self._notify(await self._write(self.release_leases_tx(owner, delivery_ids)))

    def release_leases_tx(self, owner: str, delivery_ids: Sequence[str] | None = None) -> Transaction:
        """`release_leases`'s transaction: (how many, 0, [])."""

        def tx(conn: sqlite3.Connection) -> tuple[int, int, list[Delivery]]:
            sql = "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, lease_id = NULL WHERE lease_owner = ?"
            if delivery_ids is None:
                return conn.execute(sql, (owner,)).rowcount, 0, []
            if not delivery_ids:
                return 0, 0, []
            return (
                conn.execute(
                    sql + f" AND id IN ({','.join('?' * len(delivery_ids))})", (owner, *delivery_ids)
                ).rowcount,
                0,
                [],
            )

        return tx

    async def list_deliveries(
        self,
        *,
        status: str | None = None,
        subscription: str | None = None,
        run_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Delivery], str | None]:
        limit = clamp_limit(limit)
        sql, params = page_query(
            _DELIVERY_VIEW,
            [("d.status", status), ("d.subscription", subscription), ("d.workflow_run_id", run_id)],
            keys=("d.created_at", "d.id"),
            cursor=cursor,
            limit=limit,
            dialect=SQLITE,
        )

        def query(conn: sqlite3.Connection) -> tuple[list[Delivery], str | None]:
            rows, next_cursor = split_page(conn.execute(sql, params).fetchall(), limit, key="id", dialect=SQLITE)
            return [_row_to_delivery(row, with_event=True) for row in rows], next_cursor

        return await self._read(query)

    async def get_delivery(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        def query(conn: sqlite3.Connection) -> tuple[Delivery, list[AttemptRecord]] | None:
            row = conn.execute(_DELIVERY_VIEW + " WHERE d.id = ?", (delivery_id,)).fetchone()
            if row is None:
                return None
            attempts = [
                AttemptRecord(
                    attempted_at=_parse_ts(a["attempted_at"]),
                    outcome=a["outcome"],
                    status=a["status"],
                    latency_ms=a["latency_ms"],
                    error=a["error"],
                    response=a["response"],
                    request=jsontext.loads(a["request"]),
                )
                for a in conn.execute(
                    "SELECT * FROM delivery_attempts WHERE delivery_id = ? ORDER BY id", (delivery_id,)
                )
            ]
            return _row_to_delivery(row, with_event=True), attempts

        return await self._read(query)

    async def retry_delivery(self, delivery_id: str, *, now: datetime) -> Delivery | None:
        def tx(conn: sqlite3.Connection) -> Delivery | None:
            if not _queue_again(conn, delivery_id, now):
                return None
            return _row_to_delivery(conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone())

        return self._notify((delivery := await self._write(tx), 1 if delivery else 0))

    async def replay_deliveries(
        self,
        subscription: str,
        *,
        since: datetime,
        until: datetime,
        now: datetime,
        matches: Callable[[str], bool],
        ordered: bool,
    ) -> int:
        def tx(conn: sqlite3.Connection) -> tuple[int, int]:
            events = conn.execute(
                "SELECT e.seq, e.type, e.workflow_run_id, d.id AS delivery_id FROM events e"
                " LEFT JOIN deliveries d ON d.event_seq = e.seq AND d.subscription = ?"
                " WHERE e.occurred_at >= ? AND e.occurred_at < ? ORDER BY e.seq",
                (subscription, _ts(since), _ts(until)),
            ).fetchall()
            count = 0
            for row in events:
                if row["delivery_id"] is not None:
                    _queue_again(conn, row["delivery_id"], now)
                    count += 1
                elif matches(row["type"]):
                    self._insert_delivery(conn, row["seq"], subscription, row["workflow_run_id"], ordered, now)
                    count += 1
            return count, count

        return self._notify(await self._write(tx))

    async def endpoint_health(self) -> dict[str, EndpointHealth]:
        def query(conn: sqlite3.Connection) -> dict[str, EndpointHealth]:
            return {
                row["subscription"]: _row_to_health(row) for row in conn.execute("SELECT * FROM subscription_health")
            }

        return await self._read(query)

    async def set_endpoint_disabled(self, subscription: str, *, reason: str | None, now: datetime) -> list[Event]:
        def tx(conn: sqlite3.Connection) -> tuple[list[Event], int]:
            at = _ts(now)
            conn.execute(
                "INSERT INTO subscription_health (subscription, consecutive_failures, disabled_at, disabled_reason)"
                " VALUES (?, 0, ?, ?) ON CONFLICT (subscription) DO UPDATE SET disabled_at = excluded.disabled_at,"
                " disabled_reason = excluded.disabled_reason"
                + (", consecutive_failures = 0, first_failure_at = NULL" if reason is None else ""),
                (subscription, at if reason else None, reason),
            )
            if reason is None:
                return [], 1
            event = Event(
                type="webhook.endpoint_disabled",
                workflow_run_id=None,
                occurred_at=now,
                data={"subscription": subscription, "reason": reason},
            )
            return [event], self._insert_events(conn, [event])

        events, queued = await self._write(tx)
        self.on_deliveries()
        return events

    async def pending_subscriptions(self) -> set[str]:
        return await self._read(
            lambda conn: {
                row[0] for row in conn.execute("SELECT DISTINCT subscription FROM deliveries WHERE status = 'pending'")
            }
        )

    async def outbox_stats(self, *, now: datetime) -> dict[str, Any]:
        def query(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries WHERE status = 'pending'"
            ).fetchone()
            oldest = _parse_ts(row["oldest"])
            return {"pending": row["n"], "oldest_pending_seconds": (now - oldest).total_seconds() if oldest else 0.0}

        return await self._read(query)


def _undo(
    conn: sqlite3.Connection, savepoint: str | None, error: BaseException, fail_done: Callable[[BaseException], None]
) -> None:
    """Roll back what failed with `error`: to `savepoint`, or the whole transaction (None).
    If SQLite ended the transaction itself (an I/O error, a full disk), the group's earlier
    work is gone with it: `fail_done` answers those with the error."""
    if not conn.in_transaction:
        fail_done(error)
        return
    try:
        if savepoint is None:
            conn.execute("ROLLBACK")
        else:
            conn.execute(f"ROLLBACK TO {savepoint}")
            conn.execute(f"RELEASE {savepoint}")
    except sqlite3.Error as rollback_error:
        fail_done(rollback_error)
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _units(fns: list[Callable[[sqlite3.Connection], Any]]) -> list[list[Callable[[sqlite3.Connection], Any]]]:
    """`fns` in order, those next to each other that can be run as one batch (the same `batch`
    runner) together."""
    units: list[list[Callable[[sqlite3.Connection], Any]]] = []
    for fn in fns:
        batch = getattr(fn, "batch", None)
        if batch is not None and units and getattr(units[-1][0], "batch", (None,))[0] == batch[0]:
            units[-1].append(fn)
        else:
            units.append([fn])
    return units


def _settle(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the loop: hand each caller of a group commit its result or exception."""
    for future, ok, value in answers:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _row_to_event(row: sqlite3.Row, prefix: str = "") -> Event:
    p = prefix
    return Event(
        type=row[f"{p}type"],
        workflow_run_id=row[f"{p}run" if p else "workflow_run_id"],
        occurred_at=_parse_ts(row[f"{p}at" if p else "occurred_at"]),
        data_json=row[f"{p}data"],
        id=row[f"{p}id"],
        seq=row[f"{p}seq"],
    )


def _row_to_delivery(row: sqlite3.Row, *, with_event: bool = False) -> Delivery:
    return Delivery(
        id=row["id"],
        event_seq=row["event_seq"],
        subscription=row["subscription"],
        workflow_run_id=row["workflow_run_id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=_parse_ts(row["next_attempt_at"]),
        created_at=_parse_ts(row["created_at"]),
        updated_at=_parse_ts(row["updated_at"]),
        first_attempt_at=_parse_ts(row["first_attempt_at"]),
        last_attempt_at=_parse_ts(row["last_attempt_at"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        event=_row_to_event(row, "e_") if with_event else None,
        order_key=row["order_key"],
        first_attempted_at=_parse_ts(row["first_attempted"]) if "first_attempted" in row.keys() else None,
    )


def _queue_again(conn: sqlite3.Connection, delivery_id: str, now: datetime) -> bool:
    """A retry or replay of one row: marked to go again after the attempt in flight, if one is
    (its lease held on the store's clock), else pending and due at `now`, its schedule afresh.
    False when there is no such row."""
    at = _ts(now)
    if conn.execute(_MARK_RESEND, (at, delivery_id, _ts(utcnow()))).rowcount:
        return True
    return bool(conn.execute(_RESET, (at, at, delivery_id)).rowcount)


def _recorded_attempts(conn: sqlite3.Connection, attempt_ids: Sequence[str]) -> set[str]:
    """Which of these attempts are recorded already."""
    found: set[str] = set()
    for start in range(0, len(attempt_ids), 500):
        part = attempt_ids[start : start + 500]
        found.update(
            row[0]
            for row in conn.execute(
                f"SELECT attempt_id FROM delivery_attempts WHERE attempt_id IN ({','.join('?' * len(part))})", part
            )
        )
    return found


def _has_pending(conn: sqlite3.Connection, subscription: str, order_key: str) -> bool:
    """Whether the call has a delivery still pending for the subscription (its next one waits)."""
    return (
        conn.execute(
            "SELECT 1 FROM deliveries WHERE status = 'pending' AND subscription = ? AND order_key = ? LIMIT 1",
            (subscription, order_key),
        ).fetchone()
        is not None
    )


def _apply_health_change(conn: sqlite3.Connection, change: HealthChange) -> None:
    if change.reset and not change.failures:
        conn.execute(
            "UPDATE subscription_health SET consecutive_failures = 0, first_failure_at = NULL"
            " WHERE subscription = ? AND consecutive_failures > 0",
            (change.subscription,),
        )
        return
    streak = (
        "excluded.consecutive_failures, first_failure_at = excluded.first_failure_at"
        if change.reset
        else "subscription_health.consecutive_failures + excluded.consecutive_failures,"
        " first_failure_at = COALESCE(subscription_health.first_failure_at, excluded.first_failure_at)"
    )
    conn.execute(
        "INSERT INTO subscription_health (subscription, consecutive_failures, first_failure_at) VALUES (?, ?, ?)"
        f" ON CONFLICT (subscription) DO UPDATE SET consecutive_failures = {streak}",
        (change.subscription, change.failures, _ts(change.first_failure_at)),
    )


def _row_to_health(row: sqlite3.Row) -> EndpointHealth:
    return EndpointHealth(
        subscription=row["subscription"],
        consecutive_failures=row["consecutive_failures"],
        first_failure_at=_parse_ts(row["first_failure_at"]),
        disabled_at=_parse_ts(row["disabled_at"]),
        disabled_reason=row["disabled_reason"],
    )
