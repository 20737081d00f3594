"""Durable state: one `Store` interface, SQLite (default) behind it; migrations."""

from urllib.parse import parse_qsl

from gateway.store.base import AppliedUpdate, CallSeed, Store, StoreError, TimelineEntry
from gateway.store.sqlite import SQLiteStore


SQLITE_SYNCHRONOUS = ("full", "normal")


def sqlite_options(url: str) -> tuple[str, dict[str, str]]:
    """Split `sqlite:///path[?synchronous=full|normal]` into the path and its options.

    `synchronous=full` (the default) fsyncs the WAL at every commit: an acknowledged callback
    survives a power cut. `normal` fsyncs only at checkpoints: still safe against a killed
    process (the WAL is in the OS's hands at commit), faster, but a power cut or OS crash may lose
    the last commits. Raises ValueError naming what is wrong.
    """
    path, _, query = url[len("sqlite:///"):].partition("?")
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
        if name != "synchronous":
            raise ValueError(f"unknown sqlite option {name!r} (known: synchronous)")
        if value.lower() not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"sqlite synchronous={value!r}: must be one of {', '.join(SQLITE_SYNCHRONOUS)}")
        options[name] = value.upper()
    return path, options


def open_store_for(url: str) -> Store:
    """The backend named by a `store:` URL (validated by the config schema)."""
    if url.startswith("sqlite:///"):
        path, options = sqlite_options(url)
        return SQLiteStore(path, **options)
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"unsupported store URL scheme in {url.split(':', 1)[0]!r}")


__all__ = ["AppliedUpdate", "CallSeed", "SQLiteStore", "Store", "StoreError", "TimelineEntry", "open_store_for", "sqlite_options"]
