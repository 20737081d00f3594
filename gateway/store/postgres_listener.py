"""The PostgreSQL store's listener: one dedicated connection per instance that LISTENs (delivery
wake-ups, control requests for media sessions) and holds the session advisory locks of
leadership (`hold`).

That session can end under the instance (a network drop, an idle timeout, a failover,
`pg_terminate_backend`), and its locks and LISTENs end with it. So a lock already taken is
confirmed on the live session before every use, a session that is lost or does not answer is
dropped (leading nothing from then on), and a watchdog reconnects with backoff, LISTENs again
and wakes the delivery workers (NOTIFYs sent meanwhile were lost); the lock is taken again by
the next `hold`, if no other instance took it first. Every `check_seconds` the watchdog asks
the session a question, so one that died silently (no RST) is found too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

log = logging.getLogger("gateway.store")

DELIVERIES_CHANNEL = "gateway_deliveries"
CONTROL_CHANNEL = "gateway_control"
ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, asyncio.TimeoutError)
"""What a dead or dying session raises (a terminated session can leave asyncpg mid-protocol)."""
_KEY = "hashtext(current_database() || '.' || current_schema() || ':leader:' || $1)::bigint"  # one holder per database and schema
_TAKE = f"SELECT pg_try_advisory_lock({_KEY})"
_HOLDS = (  # a bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1
    f"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
    f" AND objsubid = 1 AND classid::bigint = (({_KEY} >> 32) & 4294967295) AND objid::bigint = ({_KEY} & 4294967295))"
)


class PostgresListener:
    """`start()` after the schema exists; `close()` last. Callbacks run on the event loop."""

    def __init__(
        self,
        dsn: str,
        settings: dict[str, str],
        *,
        on_deliveries: Callable[[], None],
        on_control: Callable[[Any, int, str, object], None],
        check_seconds: float = 5.0,
        backoff: Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0),
    ) -> None:
        self.dsn = dsn
        self.settings = settings
        self.on_deliveries = on_deliveries
        self.on_control = on_control
        self.check_seconds = check_seconds
        self.backoff = tuple(backoff) or (1.0,)
        self.connects = 0  # how many sessions it opened
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one query at a time on the session
        self._lost = asyncio.Event()
        self._leading: set[str] = set()  # names whose lock the current session holds
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._connect()
        self._watchdog = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        if self._watchdog is not None:
            watchdog, self._watchdog = self._watchdog, None
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        self._leading.clear()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(OSError, asyncpg.InterfaceError):
                await conn.close()

    async def hold(self, name: str) -> bool:
        """True while this instance holds lock `name` on a live session (taken now if free)."""
        async with self._lock:
            conn = self._conn
            if conn is None or conn.is_closed():
                self._leading.discard(name)
                return False
            try:
                if name in self._leading:
                    held = await asyncio.wait_for(conn.fetchval(_HOLDS, name), self.check_seconds + 5)
                    if not held:
                        log.warning("lost leadership of %s: its lock is no longer held", name)
                        self._leading.discard(name)
                    return bool(held)
                got = await asyncio.wait_for(conn.fetchval(_TAKE, name), self.check_seconds + 5)
            except ERRORS as exc:
                self._lose(conn, f"{type(exc).__name__}: {exc}")
                return False
            if got:
                self._leading.add(name)
            return bool(got)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings=self.settings)
        try:
            await conn.add_listener(DELIVERIES_CHANNEL, lambda *args: self.on_deliveries())
            await conn.add_listener(CONTROL_CHANNEL, self.on_control)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(lambda closed: self._lose(closed, "the connection closed"))
        self._conn = conn
        self._lost.clear()
        self.connects += 1

    def _lose(self, conn: asyncpg.Connection, why: str) -> None:
        """Session `conn` is gone, and every lock it held with it (nothing if it is not the current one)."""
        if conn is not self._conn:
            return
        self._conn = None
        if self._leading:
            log.warning(
                "lost leadership of %s: the PostgreSQL listener session ended (%s)",
                ", ".join(sorted(self._leading)),
                why,
            )
        self._leading.clear()
        if not conn.is_closed():
            conn.terminate()
        self._lost.set()

    async def _watch(self) -> None:
        failures = 0
        while True:
            if self._conn is None:
                if failures:
                    await asyncio.sleep(self.backoff[min(failures, len(self.backoff)) - 1])
                try:
                    async with self._lock:
                        if self._conn is None:
                            await asyncio.wait_for(self._connect(), self.check_seconds + 5)
                except ERRORS as exc:
                    failures += 1
                    log.warning("PostgreSQL listener reconnect failed (%s: %s); trying again", type(exc).__name__, exc)
                    continue
                failures = 0
                log.info("PostgreSQL listener reconnected (LISTEN %s, %s)", DELIVERIES_CHANNEL, CONTROL_CHANNEL)
                self.on_deliveries()  # wake-ups may have been missed meanwhile
                continue
            try:
                await asyncio.wait_for(self._lost.wait(), self.check_seconds)
                continue  # lost: reconnect at once
            except TimeoutError:
                pass
            async with self._lock:
                conn = self._conn
                if conn is None:
                    continue
                try:
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), self.check_seconds + 5)
                except ERRORS as exc:
                    self._lose(conn, f"{type(exc).__name__}: {exc}")
