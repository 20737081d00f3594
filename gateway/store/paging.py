"""Keyset pagination, shared by every listing of every backend: newest first by
(`created_at`, id), with an opaque cursor naming the last row of the page before."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.store.base import StoreError


@dataclass(frozen=True)
class Dialect:
    """How a backend spells the n-th placeholder and carries the cursor's creation time."""

    mark: Callable[[int], str]
    time_param: Callable[[str], Any]  # the cursor's time text -> a query parameter
    time_text: Callable[[Any], str]  # a row's `created_at` -> the cursor's time text


SQLITE = Dialect(mark=lambda n: "?", time_param=str, time_text=str)  # times are stored as RFC 3339 text
POSTGRES = Dialect(mark=lambda n: f"${n}", time_param=datetime.fromisoformat, time_text=datetime.isoformat)


MAX_CURSOR_CHARS = 512


def encode_cursor(created_at: str, key: str) -> str:
    """The cursor after a row: its creation time (RFC 3339) and its id."""
    return base64.urlsafe_b64encode(json.dumps([created_at, key], separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """(created_at, id) from a cursor this API returned; `StoreError` for anything else."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:  # ours are ~60: a long one is not ours (and could nest deeply)
            raise ValueError
        created_at, key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(created_at, str) or not isinstance(key, str):
            raise ValueError
        datetime.fromisoformat(created_at)
        return created_at, key
    except (ValueError, TypeError, RecursionError):
        raise StoreError("cursor is not one this API returned") from None


def page_query(
    select: str,
    filters: Sequence[tuple[str, Any]],
    *,
    keys: tuple[str, str],
    cursor: str | None,
    limit: int,
    dialect: Dialect,
) -> tuple[str, list[Any]]:
    """SQL and parameters for one page: `select` filtered by the non-empty `filters`
    (column, value), after `cursor`, newest first, one row more than `limit` (to see if
    another page follows), in the backend's `dialect`."""
    mark = dialect.mark
    where: list[str] = []
    params: list[Any] = []
    for column, value in filters:
        if value:
            params.append(value)
            where.append(f"{column} = {mark(len(params))}")
    if cursor:
        created_at, key = decode_cursor(cursor)
        params += [dialect.time_param(created_at), key]
        where.append(f"({keys[0]}, {keys[1]}) < ({mark(len(params) - 1)}, {mark(len(params))})")
    params.append(limit + 1)
    sql = select + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY {keys[0]} DESC, {keys[1]} DESC LIMIT {mark(len(params))}"
    return sql, params


def split_page(rows: Sequence[Any], limit: int, *, key: str, dialect: Dialect) -> tuple[Sequence[Any], str | None]:
    """(the page's rows, the next cursor or None) from the `limit + 1` rows `page_query` asked for."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(dialect.time_text(rows[-1]["created_at"]), rows[-1][key])
