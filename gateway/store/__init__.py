"""Durable state: one `Store` interface, SQLite (default) behind it; migrations."""

from gateway.store.base import AppliedUpdate, CallSeed, Store, StoreError, TimelineEntry
from gateway.store.sqlite import SQLiteStore


def open_store_for(url: str) -> Store:
    """The backend named by a `store:` URL (validated by the config schema)."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):])
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"unsupported store URL scheme in {url.split(':', 1)[0]!r}")


__all__ = ["AppliedUpdate", "CallSeed", "SQLiteStore", "Store", "StoreError", "TimelineEntry", "open_store_for"]
