"""Store fixtures: the contract tests run against every backend (PostgreSQL when reachable)."""

from __future__ import annotations

import pytest

from gateway.store import SQLiteStore
from postgres_support import BACKENDS, postgres_schema_url


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    if request.param == "sqlite":
        backend = SQLiteStore(str(tmp_path / "gateway.db"))
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()
        return
    from gateway.store.postgres import PostgresStore

    async with postgres_schema_url() as url:
        backend = PostgresStore(url)
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()
