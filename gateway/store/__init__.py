"""Durable state: one `Store` interface, SQLite (default) and PostgreSQL behind it; migrations.

Where things are:
- `interfaces` (CallStore, Outbox, CampaignStore) and `base` (Store: the three, with the
  `StoreWiring` given to the constructor); `values` (deliveries, attempts, health...), `errors`.
- What to write is decided by pure planners: `gateway.calls.planner` (provider updates) and
  `activity` (media and agent activity); the backends only find rows and write plans.
- SQLite: `sqlite_engine` (the group-commit writer thread, no SQL of any table), `sqlite_rows`
  (columns and row <-> value conversion), `sqlite_calls`, `sqlite_events`, `sqlite_outbox`,
  `sqlite_campaigns` (the SQL), assembled in `sqlite`; `writer_process` runs the hot `*_tx`
  transactions in a process of their own.
- PostgreSQL: `postgres_pool` (pool, listener, migrations), `group_commit` (batched callbacks),
  `postgres_rows`, `postgres_calls`, `postgres_events`, `postgres_outbox`,
  `postgres_campaigns`, assembled in `postgres`.
"""

from urllib.parse import parse_qsl

from gateway.store.base import AppliedUpdate, CallSeed, Store, StoreError, StoreWiring, TimelineEntry
from gateway.store.sqlite import SQLiteStore

SQLITE_OPTIONS = {"synchronous": ("full", "normal"), "writer": ("thread", "process")}


def sqlite_options(url: str) -> tuple[str, dict[str, str]]:
    """Split `sqlite:///path[?synchronous=full|normal][&writer=thread|process]` into the path
    and its options.

    `synchronous=full` (the default) fsyncs the WAL at every commit: an acknowledged callback
    survives a power cut. `normal` fsyncs only at checkpoints: still safe against a killed
    process (the WAL is in the OS's hands at commit), faster, but a power cut or OS crash may lose
    the last commits. `writer=process` runs the busiest transactions in a process of their own
    (`gateway.store.writer_process`); `thread` (the default) in a thread of the gateway's.
    Raises ValueError naming what is wrong.
    """
    path, _, query = url[len("sqlite:///") :].partition("?")
    if not path:
        raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///data/gateway.db")
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ValueError(f"sqlite options {query!r}: {exc} (expected e.g. ?synchronous=normal)") from None
    for name, value in pairs:
        if name in options:
            raise ValueError(f"sqlite option {name!r} is given twice")
        if name not in SQLITE_OPTIONS:
            raise ValueError(f"unknown sqlite option {name!r} (known: {', '.join(SQLITE_OPTIONS)})")
        if value.lower() not in SQLITE_OPTIONS[name]:
            raise ValueError(f"sqlite {name}={value!r}: must be one of {', '.join(SQLITE_OPTIONS[name])}")
        options[name] = value.upper() if name == "synchronous" else value.lower()
    return path, options


def open_store_for(url: str, *, writer_process: bool = True, wiring: StoreWiring | None = None) -> Store:
    """The backend named by a `store:` URL (validated by the config schema), given `wiring`.
    `writer_process` false: never a writer process of its own (for a child process that only
    reads)."""
    if url.startswith("sqlite:///"):
        path, options = sqlite_options(url)
        if options.pop("writer", "thread") == "process" and writer_process:
            from gateway.store.writer_process import WriterProcessStore

            return WriterProcessStore(path, wiring=wiring, **options)
        return SQLiteStore(path, wiring=wiring, **options)
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url, wiring=wiring)
    raise StoreError(f"unsupported store URL scheme in {url.split(':', 1)[0]!r}")


__all__ = [
    "AppliedUpdate",
    "CallSeed",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreWiring",
    "TimelineEntry",
    "open_store_for",
    "sqlite_options",
]
