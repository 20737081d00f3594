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
import json
import os
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from gateway.calls.lifecycle import CallUpdate, decide_transition
from gateway.calls.record import CallRecord, utcnow
from gateway.calls.states import CallState
from gateway.events.envelope import Event, new_event_id
from gateway.store.base import (
    CALL_COLUMNS,
    CALL_JSON_FIELDS,
    CALL_TIME_FIELDS,
    AppliedUpdate,
    AttemptRecord,
    CallSeed,
    Delivery,
    DeliveryResult,
    EndpointHealth,
    Store,
    StoreError,
    TimelineEntry,
    clamp_limit,
    event_data,
)
from gateway.store.migrations import MIGRATIONS
from gateway.store.paging import SQLITE, page_query, split_page
from gateway.store.sqlite_campaigns import SQLiteCampaigns

T = TypeVar("T")



def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not timezone.utc:  # every time the gateway makes is already aware UTC
        value = value.astimezone(timezone.utc)
    return value.isoformat(timespec="microseconds")


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)  # = json.dumps(...) with these


def _dumps(value: Any) -> str:
    if not value and isinstance(value, dict):
        return "{}"
    return _JSON.encode(value)


def _row_to_record(row: sqlite3.Row) -> CallRecord:
    values = dict(row)
    for name in CALL_TIME_FIELDS:
        values[name] = _parse_ts(values[name])
    for name in CALL_JSON_FIELDS:
        values[name] = json.loads(values[name])
    values["state"] = CallState(values["state"])
    values["voicemail"] = bool(values["voicemail"])
    return CallRecord(**values)


def _record_params(record: CallRecord) -> tuple[Any, ...]:
    out: list[Any] = []
    for name in CALL_COLUMNS:
        value = getattr(record, name)
        if name in CALL_TIME_FIELDS:
            value = _ts(value)
        elif name in CALL_JSON_FIELDS:
            value = _dumps(value)
        elif name == "state":
            value = value.value
        elif name == "voicemail":
            value = int(value)
        out.append(value)
    return tuple(out)


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

    # -- plumbing ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
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
        lock_fd = self._lock_fd if self._wconn is not None else None
        lock_error: StoreError | None = None
        if lock_fd is not None:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            except OSError as exc:  # answered like a failed BEGIN: nobody is left waiting
                lock_error = StoreError(f"sqlite: cannot take the write lock {self.path}.writelock: {exc}")
                lock_fd = None
        try:
            with self._queued_lock:
                batch = self._queued[: self.MAX_GROUP]
                del self._queued[: self.MAX_GROUP]
                if self._queued:
                    self._writer.submit(self._drain)  # the rest, after this group
                else:
                    self._drain_scheduled = False
            if lock_error is not None:
                outcomes: list[tuple[bool, Any]] = [(False, lock_error)] * len(batch)
            else:
                outcomes = self._run_group([fn for fn, _ in batch]) if batch else []
        finally:
            if lock_fd is not None:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
                except OSError:  # the outcomes stand; the kernel drops the lock with the descriptor
                    pass
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, future), (ok, value) in zip(batch, outcomes):
            by_loop.setdefault(future.get_loop(), []).append((future, ok, value))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, answers)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
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
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcomes.append((False, exc))
                if conn.in_transaction:
                    try:
                        if single:
                            conn.execute("ROLLBACK")
                        else:
                            conn.execute("ROLLBACK TO tx")
                            conn.execute("RELEASE tx")
                    except sqlite3.Error as rollback_error:
                        fail_done(rollback_error)
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                else:
                    fail_done(exc)
                continue
            done.append(len(outcomes))
            outcomes.append((True, value))
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                fail_done(exc)
        return outcomes

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

    @staticmethod
    def _insert_timeline(conn: sqlite3.Connection, run_id: str, at: datetime, *, source: str, kind: str,
                         outcome: str, raw_status: str | None, state: str | None, sequence: int | None,
                         data: dict[str, Any]) -> None:
        conn.execute(
            "INSERT INTO call_timeline (workflow_run_id, received_at, source, kind, outcome, raw_status, state, sequence, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, _ts(at), source, kind, outcome, raw_status, state, sequence, _dumps(data)),
        )

    def _insert_events(self, conn: sqlite3.Connection, events: list[Event]) -> int:
        """Write events and, in the same transaction, one delivery row per subscription."""
        queued = 0
        for event in events:
            cursor = conn.execute(
                "INSERT INTO events (id, type, workflow_run_id, occurred_at, data) VALUES (?, ?, ?, ?, ?)",
                (event.id, event.type, event.workflow_run_id, _ts(event.occurred_at), _dumps(event.data)),
            )
            event.seq = int(cursor.lastrowid)
            for subscription, ordered in self.fanout(event):
                self._insert_delivery(conn, event.seq, subscription, event.workflow_run_id, ordered, event.occurred_at)
                queued += 1
        return queued

    @staticmethod
    def _insert_delivery(conn: sqlite3.Connection, event_seq: int, subscription: str, run_id: str | None,
                         ordered: bool, now: datetime) -> None:
        at = _ts(now)
        conn.execute(
            "INSERT INTO deliveries (id, event_seq, subscription, workflow_run_id, order_key, status, attempts,"
            " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            (new_event_id("msg"), event_seq, subscription, run_id, run_id if ordered else None, at, at, at),
        )

    async def apply_update(self, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None) -> AppliedUpdate:
        def tx(conn: sqlite3.Connection) -> AppliedUpdate:
            now = utcnow()
            current = self._load(conn, run_id) if run_id else None
            if current is None and update.provider_call_id:
                row = conn.execute(
                    "SELECT * FROM calls WHERE provider = ? AND provider_call_id = ?",
                    (update.provider, update.provider_call_id),
                ).fetchone()
                current = None if row is None else _row_to_record(row)
            target = current.workflow_run_id if current else (run_id or str(uuid.uuid4()))
            transition = decide_transition(current, update, run_id=target, now=now)
            record = transition.record
            if seed is not None:
                seed.fill(record)
            conn.execute(_UPSERT_CALL, _record_params(record))
            self._insert_timeline(
                conn, target, now, source=update.provider, kind=update.kind, outcome=transition.outcome,
                raw_status=update.raw_status, state=update.state.value if update.state else None,
                sequence=update.sequence, data=update.params,
            )
            events = [Event(type=name, workflow_run_id=target, occurred_at=now, data=event_data(record)) for name in transition.events]
            queued = self._insert_events(conn, events)
            return AppliedUpdate(record=record, events=events, outcome=transition.outcome, created=current is None), queued

        return self._notify(await self._write(tx))

    def _notify(self, result: tuple[T, int]) -> T:
        value, queued = result
        if queued:
            self.on_deliveries()
        return value

    async def record_activity(
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
    ) -> list[Event]:
        def tx(conn: sqlite3.Connection) -> list[Event]:
            now = utcnow()
            record = self._load(conn, run_id)
            if record is None:
                raise StoreError(f"unknown workflow_run_id {run_id!r}")
            if gathered_context or annotations or media:
                record.gathered_context.update(gathered_context or {})
                record.annotations.update(annotations or {})
                record.media.update(media or {})
                record.updated_at = now
                conn.execute(_UPSERT_CALL, _record_params(record))
            self._insert_timeline(conn, run_id, now, source=source, kind=kind, outcome="recorded",
                                  raw_status=None, state=None, sequence=None, data=data)
            emitted = [
                Event(type=name, workflow_run_id=run_id, occurred_at=now, data=event_data(record, extra))
                for name, extra in events
            ]
            return emitted, self._insert_events(conn, emitted)

        return self._notify(await self._write(tx))

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
                    id=row["id"], received_at=_parse_ts(row["received_at"]), source=row["source"],
                    kind=row["kind"], outcome=row["outcome"], raw_status=row["raw_status"],
                    state=row["state"], sequence=row["sequence"], data=json.loads(row["data"]),
                )
                for row in rows
            ]

        return await self._read(query)

    async def list_calls(self, *, state: str | None = None, limit: int = 50, cursor: str | None = None) -> tuple[list[CallRecord], str | None]:
        limit = clamp_limit(limit)
        sql, params = page_query("SELECT * FROM calls", [("state", state)], keys=("created_at", "workflow_run_id"),
                                 cursor=cursor, limit=limit, dialect=SQLITE)

        def query(conn: sqlite3.Connection) -> tuple[list[CallRecord], str | None]:
            rows, next_cursor = split_page(conn.execute(sql, params).fetchall(), limit, key="workflow_run_id", dialect=SQLITE)
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
    async def claim_deliveries(self, owner: str, *, now: datetime, lease_seconds: float,
                               capacity: Mapping[str, int], limit: int = 200) -> list[Delivery]:
        wanted = {name: n for name, n in capacity.items() if n > 0}
        if not wanted:
            return []
        at = _ts(now)
        until = _ts(now + timedelta(seconds=lease_seconds))

        def tx(conn: sqlite3.Connection) -> list[Delivery]:
            picked: list[sqlite3.Row] = []
            for subscription, n in wanted.items():
                room = min(n, limit - len(picked))
                if room <= 0:
                    break
                # Walk the due index in time order and stop at `room` rows: the cost follows
                # what is claimed (plus rows leased or waiting behind an earlier event of the
                # same call), not the size of the backlog. Equal times keep insertion order.
                picked += conn.execute(
                    "SELECT d.*, e.id AS e_id, e.type AS e_type, e.workflow_run_id AS e_run, e.occurred_at AS e_at,"
                    " e.data AS e_data, e.seq AS e_seq FROM deliveries d INDEXED BY deliveries_due"
                    " JOIN events e ON e.seq = d.event_seq"
                    " WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until < ?)"
                    " AND d.subscription = ?"
                    " AND (d.order_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending'"
                    " AND p.subscription = d.subscription AND p.order_key = d.order_key AND p.event_seq < d.event_seq))"
                    " ORDER BY d.next_attempt_at LIMIT ?",
                    (at, at, subscription, room),
                ).fetchall()
            conn.executemany("UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE id = ?",
                             [(owner, until, row["id"]) for row in picked])
            return [_row_to_delivery(row, with_event=True) for row in picked]

        return await self._write(tx)

    async def finish_delivery(self, delivery: Delivery, owner: str, result: DeliveryResult) -> EndpointHealth:
        attempt = result.attempt

        def tx(conn: sqlite3.Connection) -> EndpointHealth:
            at = _ts(attempt.attempted_at)
            conn.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempted_at, outcome, status, latency_ms, error, response, request)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (delivery.id, at, attempt.outcome, attempt.status, attempt.latency_ms, attempt.error, attempt.response,
                 _dumps(attempt.request)),
            )
            conn.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = COALESCE(?, next_attempt_at),"
                " lease_owner = NULL, lease_until = NULL, first_attempt_at = COALESCE(first_attempt_at, ?),"
                " last_attempt_at = ?, last_status = ?, last_error = ?, updated_at = ? WHERE id = ?",
                (result.status, _ts(result.next_attempt_at), at, at, attempt.status, attempt.error, at, delivery.id),
            )
            if result.gathered_context and delivery.workflow_run_id:
                record = self._load(conn, delivery.workflow_run_id)
                if record is not None:
                    record.gathered_context.update(result.gathered_context)
                    record.updated_at = attempt.attempted_at
                    conn.execute(_UPSERT_CALL, _record_params(record))
            if result.endpoint_ok is True:
                conn.execute("UPDATE subscription_health SET consecutive_failures = 0, first_failure_at = NULL"
                             " WHERE subscription = ? AND consecutive_failures > 0", (delivery.subscription,))
            elif result.endpoint_ok is False:
                conn.execute(
                    "INSERT INTO subscription_health (subscription, consecutive_failures, first_failure_at) VALUES (?, 1, ?)"
                    " ON CONFLICT (subscription) DO UPDATE SET consecutive_failures = subscription_health.consecutive_failures + 1,"
                    " first_failure_at = COALESCE(subscription_health.first_failure_at, excluded.first_failure_at)",
                    (delivery.subscription, at),
                )
            row = conn.execute("SELECT * FROM subscription_health WHERE subscription = ?", (delivery.subscription,)).fetchone()
            return _row_to_health(row) if row else EndpointHealth(delivery.subscription)

        return await self._write(tx)

    async def release_leases(self, owner: str, delivery_ids: Sequence[str] | None = None) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            sql = "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?"
            if delivery_ids is None:
                return conn.execute(sql, (owner,)).rowcount
            if not delivery_ids:
                return 0
            return conn.execute(sql + f" AND id IN ({','.join('?' * len(delivery_ids))})",
                                (owner, *delivery_ids)).rowcount

        return await self._write(tx)

    async def list_deliveries(self, *, status: str | None = None, subscription: str | None = None,
                              run_id: str | None = None, limit: int = 50, cursor: str | None = None) -> tuple[list[Delivery], str | None]:
        limit = clamp_limit(limit)
        sql, params = page_query(
            "SELECT d.*, e.id AS e_id, e.type AS e_type, e.workflow_run_id AS e_run, e.occurred_at AS e_at,"
            " e.data AS e_data, e.seq AS e_seq FROM deliveries d JOIN events e ON e.seq = d.event_seq",
            [("d.status", status), ("d.subscription", subscription), ("d.workflow_run_id", run_id)],
            keys=("d.created_at", "d.id"), cursor=cursor, limit=limit, dialect=SQLITE,
        )

        def query(conn: sqlite3.Connection) -> tuple[list[Delivery], str | None]:
            rows, next_cursor = split_page(conn.execute(sql, params).fetchall(), limit, key="id", dialect=SQLITE)
            return [_row_to_delivery(row, with_event=True) for row in rows], next_cursor

        return await self._read(query)

    async def get_delivery(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        def query(conn: sqlite3.Connection) -> tuple[Delivery, list[AttemptRecord]] | None:
            row = conn.execute(
                "SELECT d.*, e.id AS e_id, e.type AS e_type, e.workflow_run_id AS e_run, e.occurred_at AS e_at,"
                " e.data AS e_data, e.seq AS e_seq FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.id = ?",
                (delivery_id,),
            ).fetchone()
            if row is None:
                return None
            attempts = [
                AttemptRecord(attempted_at=_parse_ts(a["attempted_at"]), outcome=a["outcome"], status=a["status"],
                              latency_ms=a["latency_ms"], error=a["error"], response=a["response"], request=json.loads(a["request"]))
                for a in conn.execute("SELECT * FROM delivery_attempts WHERE delivery_id = ? ORDER BY id", (delivery_id,))
            ]
            return _row_to_delivery(row, with_event=True), attempts

        return await self._read(query)

    async def retry_delivery(self, delivery_id: str, *, now: datetime) -> Delivery | None:
        def tx(conn: sqlite3.Connection) -> Delivery | None:
            at = _ts(now)
            changed = conn.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL, next_attempt_at = ?,"
                " lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?", (at, at, delivery_id),
            ).rowcount
            if not changed:
                return None
            return _row_to_delivery(conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone())

        return self._notify((delivery := await self._write(tx), 1 if delivery else 0))

    async def replay_deliveries(self, subscription: str, *, since: datetime, until: datetime, now: datetime,
                                matches: Callable[[str], bool], ordered: bool) -> int:
        def tx(conn: sqlite3.Connection) -> tuple[int, int]:
            at = _ts(now)
            events = conn.execute(
                "SELECT e.seq, e.type, e.workflow_run_id, d.id AS delivery_id FROM events e"
                " LEFT JOIN deliveries d ON d.event_seq = e.seq AND d.subscription = ?"
                " WHERE e.occurred_at >= ? AND e.occurred_at < ? ORDER BY e.seq",
                (subscription, _ts(since), _ts(until)),
            ).fetchall()
            count = 0
            for row in events:
                if row["delivery_id"] is not None:
                    conn.execute(
                        "UPDATE deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL, next_attempt_at = ?,"
                        " lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?", (at, at, row["delivery_id"]),
                    )
                    count += 1
                elif matches(row["type"]):
                    self._insert_delivery(conn, row["seq"], subscription, row["workflow_run_id"], ordered, now)
                    count += 1
            return count, count

        return self._notify(await self._write(tx))

    async def endpoint_health(self) -> dict[str, EndpointHealth]:
        def query(conn: sqlite3.Connection) -> dict[str, EndpointHealth]:
            return {row["subscription"]: _row_to_health(row) for row in conn.execute("SELECT * FROM subscription_health")}

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
            event = Event(type="webhook.endpoint_disabled", workflow_run_id=None, occurred_at=now,
                          data={"subscription": subscription, "reason": reason})
            return [event], self._insert_events(conn, [event])

        events, queued = await self._write(tx)
        self.on_deliveries()
        return events

    async def outbox_stats(self, *, now: datetime) -> dict[str, Any]:
        def query(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries WHERE status = 'pending'").fetchone()
            oldest = _parse_ts(row["oldest"])
            return {"pending": row["n"], "oldest_pending_seconds": (now - oldest).total_seconds() if oldest else 0.0}

        return await self._read(query)


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
    return Event(type=row[f"{p}type"], workflow_run_id=row[f"{p}run" if p else "workflow_run_id"],
                 occurred_at=_parse_ts(row[f"{p}at" if p else "occurred_at"]), data=json.loads(row[f"{p}data"]),
                 id=row[f"{p}id"], seq=row[f"{p}seq"])


def _row_to_delivery(row: sqlite3.Row, *, with_event: bool = False) -> Delivery:
    return Delivery(
        id=row["id"], event_seq=row["event_seq"], subscription=row["subscription"], workflow_run_id=row["workflow_run_id"],
        status=row["status"], attempts=row["attempts"], next_attempt_at=_parse_ts(row["next_attempt_at"]),
        created_at=_parse_ts(row["created_at"]), updated_at=_parse_ts(row["updated_at"]),
        first_attempt_at=_parse_ts(row["first_attempt_at"]), last_attempt_at=_parse_ts(row["last_attempt_at"]),
        last_status=row["last_status"], last_error=row["last_error"],
        event=_row_to_event(row, "e_") if with_event else None,
    )


def _row_to_health(row: sqlite3.Row) -> EndpointHealth:
    return EndpointHealth(subscription=row["subscription"], consecutive_failures=row["consecutive_failures"],
                          first_failure_at=_parse_ts(row["first_failure_at"]), disabled_at=_parse_ts(row["disabled_at"]),
                          disabled_reason=row["disabled_reason"])
