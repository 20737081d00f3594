"""Where the tests find PostgreSQL, and a fresh schema per test.

`GATEWAY_TEST_POSTGRES_URL` names the server (default: the database `.ci/run` creates).
When it cannot be reached the PostgreSQL half of the suite is not generated and the run
says so loudly at the end; under CI (`CI=true`) that is an error instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import TYPE_CHECKING, AsyncIterator, Iterator

if TYPE_CHECKING:
    from gateway.store.base import Store

DEFAULT_URL = "postgresql://gateway:gateway@127.0.0.1:5432/gateway_test"
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", DEFAULT_URL)


def _reachable(url: str) -> str | None:
    """None when PostgreSQL answers at `url`, else why not."""
    try:
        import asyncpg
    except ImportError as exc:
        return f"asyncpg is not installed ({exc})"

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # any failure means: not usable here
        return f"{type(exc).__name__}: {exc}"
    return None


POSTGRES_PROBLEM = _reachable(POSTGRES_URL)
if POSTGRES_PROBLEM and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must run the PostgreSQL half of the suite, but {POSTGRES_URL} is not usable: {POSTGRES_PROBLEM}")
BACKENDS = ["sqlite"] if POSTGRES_PROBLEM else ["sqlite", "postgresql"]
STORE_BACKENDS = ["sqlite", "sqlite-writer-process", *BACKENDS[1:]]
"""For the store's own contract: SQLite with its hot transactions in a writer process too."""


@contextlib.asynccontextmanager
async def postgres_schema_url() -> AsyncIterator[str]:
    """A store URL whose `?schema=` is a fresh schema, dropped afterwards."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@contextlib.contextmanager
def postgres_schema_url_sync() -> Iterator[str]:
    """`postgres_schema_url` for synchronous fixtures (it runs the async steps to completion)."""
    context = postgres_schema_url()
    url = asyncio.run(context.__aenter__())
    try:
        yield url
    finally:
        asyncio.run(context.__aexit__(None, None, None))


@contextlib.asynccontextmanager
async def open_store(backend: str, sqlite_path: str) -> AsyncIterator["Store"]:
    """An opened store of `backend` ("sqlite": a file at `sqlite_path`; "sqlite-writer-process":
    the same with a writer process; "postgresql": a fresh schema), closed (and the schema
    dropped) afterwards."""
    from gateway.store import SQLiteStore
    from gateway.store.writer_process import WriterProcessStore

    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            store: Store = SQLiteStore(sqlite_path)
        elif backend == "sqlite-writer-process":
            store = WriterProcessStore(sqlite_path)
        else:
            from gateway.store.postgres import PostgresStore

            store = PostgresStore(await stack.enter_async_context(postgres_schema_url()))
        await store.open()
        try:
            yield store
        finally:
            await store.close()


async def leader_pids(url: str, name: str) -> list[int]:
    """Backend pids holding the leadership lock `name` (e.g. "campaign-runner") of the store at
    `url` (the schema its `?schema=` names), read from `pg_locks` by another session."""
    import asyncpg

    from gateway.store.postgres import split_store_url

    dsn, schema = split_store_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        key = await conn.fetchval("SELECT hashtext(current_database() || '.' || $1 || ':' || $2)::bigint",
                                  schema or "public", f"leader:{name}")
        rows = await conn.fetch("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                                " AND classid::bigint = (($1::bigint >> 32) & 4294967295) AND objid::bigint = ($1::bigint & 4294967295)",
                                key)
        return [row["pid"] for row in rows]
    finally:
        await conn.close()


async def terminate_backend(pid: int) -> None:
    """`pg_terminate_backend(pid)`: the session ends as in a failover or an idle timeout."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
