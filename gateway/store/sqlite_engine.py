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
import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from gateway.calls.record import utcnow
from gateway.store.errors import StoreError
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_rows import ts

T = TypeVar("T")
Item = TypeVar("Item")
R = TypeVar("R")

Tx = Callable[[sqlite3.Connection], Any]
"""A write transaction: run whole on the writer thread, inside the group's transaction."""

BatchRunner = Callable[[sqlite3.Connection, list[Item]], list[R]]
"""Writes several items of one kind at once, a result per item, in order."""


class Batched(Generic[Item, R]):
    """A transaction the engine may write together with its neighbours of the same `runner`
    (in one savepoint, one statement per table); alone, it is `runner(conn, [item])`. If the
    batch fails, each is run again alone."""

    __slots__ = ("item", "runner")

    def __init__(self, runner: BatchRunner[Item, R], item: Item) -> None:
        self.runner = runner
        self.item = item

    def __call__(self, conn: sqlite3.Connection) -> R:
        return self.runner(conn, [self.item])[0]


class SQLiteEngine:
    """The group-commit engine under `SQLiteStore`: a writer thread that runs queued
    transactions in groups (see the module), a reader thread for queries, the cross-process
    write lock and the schema's migrations. It knows no table; the store's modules bring the SQL
    as transactions (`Tx`, or `Batched` for those it may write together)."""

    MAX_GROUP = 256  # transactions per group commit

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._queued: list[tuple[Tx, asyncio.Future[Any]]] = []
        self._queued_lock = threading.Lock()
        self._drain_scheduled = False
        self._lock_fd: int | None = None  # the cross-process write lock, see the module docstring
        self._leases: dict[str, int] = {}  # rows leased to the direct dispatch in this group, by subscription

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
        batch: list[tuple[Tx, asyncio.Future[Any]]] = []

        def take() -> list[Tx]:
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
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(future.get_loop(), []).append((future, ok, value))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, answers)

    def run_locked(self, take: Callable[[], list[Tx]]) -> list[tuple[bool, Any]]:
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
                with contextlib.suppress(OSError):  # the outcomes stand; the kernel drops the lock with the descriptor
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _run_group(self, fns: list[Tx]) -> list[tuple[bool, Any]]:
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
        for runner, unit in _units(fns):
            if runner is not None and len(unit) > 1:
                try:
                    conn.execute("SAVEPOINT batch")
                    values = runner(conn, [fn.item for fn in unit if isinstance(fn, Batched)])
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
        fns: Sequence[Tx],
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
                (migration.version, migration.name, ts(utcnow())),
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

        with contextlib.suppress(RuntimeError):  # the executor is already shut down (closed twice)
            await loop.run_in_executor(self._writer, close_writer)
        if self._rconn is not None:
            await loop.run_in_executor(self._reader, self._rconn.close)
        self._rconn = None
        self._writer.shutdown(wait=False)
        self._reader.shutdown(wait=False)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())


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


def _units(fns: list[Tx]) -> list[tuple[BatchRunner[Any, Any] | None, list[Tx]]]:
    """`fns` in order, those next to each other that can be run as one batch (`Batched` with
    the same runner) together, with that runner (None: each alone)."""
    units: list[tuple[BatchRunner[Any, Any] | None, list[Tx]]] = []
    for fn in fns:
        runner = fn.runner if isinstance(fn, Batched) else None
        if runner is not None and units and units[-1][0] == runner:
            units[-1][1].append(fn)
        else:
            units.append((runner, [fn]))
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
