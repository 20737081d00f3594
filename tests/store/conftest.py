"""Store fixtures: the contract tests run against every backend listed here."""

from __future__ import annotations

import pytest

from gateway.store import SQLiteStore


@pytest.fixture(params=["sqlite"])
async def store(request, tmp_path):
    backend = SQLiteStore(str(tmp_path / "gateway.db"))
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()
