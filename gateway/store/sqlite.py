"""SQLite backend (WAL), the embedded default: `SQLiteStore` is the group-commit engine
(`sqlite_engine`) with the SQL of each group of tables on it: calls and timelines
(`sqlite_calls`), events and their fan-out (`sqlite_events`), the outbox (`sqlite_outbox`) and
campaigns (`sqlite_campaigns`); rows convert in `sqlite_rows`. The event loop only awaits
futures; it never touches the database.
"""

from __future__ import annotations

from gateway.store.sqlite_calls import SQLiteCalls
from gateway.store.sqlite_campaigns import SQLiteCampaigns
from gateway.store.sqlite_outbox import SQLiteOutbox


class SQLiteStore(SQLiteCalls, SQLiteOutbox, SQLiteCampaigns):
    """The embedded default store."""


__all__ = ["SQLiteStore"]
