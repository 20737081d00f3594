"""The PostgreSQL store's plumbing: a pool of asyncpg connections (one schema), migrations,
the listener's wake-ups, control messages and leadership."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway import jsontext
from gateway.calls.record import utcnow
from gateway.store.base import (
    Store,
    StoreError,
    StoreWiring,
)
from gateway.store.migrations import MIGRATIONS
from gateway.store.postgres_listener import CONTROL_CHANNEL, PostgresListener

T = TypeVar("T")

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection: one of the pool's (a proxy) or one of its own."""

_MIGRATION_LOCK = 0x6761746577  # "gatew": one migrator at a time across instances


def split_store_url(url: str) -> tuple[str, str | None]:
    """(DSN for asyncpg, schema or None): a `?schema=NAME` query parameter picks the schema."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql" if parts.scheme in ("postgresql", "postgres") else parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


async def _init_connection(conn: Conn) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=jsontext.dumps, decoder=jsontext.loads, schema="pg_catalog")


class PostgresPool(Store):
    """The connection pool under `PostgresStore`, its listener (wake-ups, control messages,
    leadership) and the schema's migrations. It knows no table; the store's modules bring the
    SQL as transactions (`_tx`) and queries (`_query`)."""

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10, wiring: StoreWiring | None = None) -> None:
        super().__init__(wiring=wiring)
        self.url = url
        self.dsn, self.schema = split_store_url(url)
        self.min_size, self.max_size = min_size, max_size
        self._pool: asyncpg.Pool | None = None
        self.listener: PostgresListener | None = None

    # -- plumbing ---------------------------------------------------------------------
    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is closed")
        return self._pool

    async def open(self) -> None:
        settings = {"search_path": self.schema} if self.schema else {}
        try:
            if self.schema:
                conn = await asyncpg.connect(self.dsn)
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                init=_init_connection,
                server_settings=settings,
            )
            async with self.pool.acquire() as pooled:
                await self._migrate(pooled)
            self.listener = PostgresListener(
                self.dsn, settings, on_deliveries=lambda: self.on_deliveries(), on_control=self._on_control
            )
            await self.listener.start()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreError(f"cannot open PostgreSQL store: {type(exc).__name__}: {exc}") from exc

    async def hold_leadership(self, name: str) -> bool:
        """A session advisory lock on the listener's session, confirmed live at every call (see
        `PostgresListener`): one leader per database and schema, and none while its session is gone."""
        return self.listener is not None and await self.listener.hold(name)

    def _on_control(self, connection: object, pid: int, channel: str, payload: object) -> None:
        try:
            message = json.loads(str(payload))
            run_id, action, data = message["run_id"], message["action"], message.get("data") or {}
        except (ValueError, KeyError, TypeError):
            return
        if self.control_handler is not None:
            self.control_handler(run_id, action, data)

    async def publish_control(self, run_id: str, action: str, data: dict[str, Any] | None = None) -> None:
        """NOTIFY every instance (this one included); the owner of the media session acts."""
        payload = json.dumps({"run_id": run_id, "action": action, "data": data or {}})
        await self._query(lambda conn: conn.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, payload))

    @staticmethod
    async def _migrate(conn: Conn) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
            for migration in MIGRATIONS:
                if migration.version not in done:
                    await conn.execute(migration.postgresql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        utcnow(),
                    )

    async def close(self) -> None:
        if self.listener is not None:
            listener, self.listener = self.listener, None
            await listener.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        try:
            await self.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {exc}") from exc

    async def _tx(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                return await fn(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from exc

    async def _query(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        try:
            async with self.pool.acquire() as conn:
                return await fn(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from exc
