"""Store fixtures: the contract tests run against every backend (PostgreSQL when reachable)."""

from __future__ import annotations

import pytest

from postgres_support import STORE_BACKENDS, open_store


@pytest.fixture(params=STORE_BACKENDS)
async def store(request, tmp_path):
    async with open_store(request.param, str(tmp_path / "gateway.db")) as backend:
        yield backend
