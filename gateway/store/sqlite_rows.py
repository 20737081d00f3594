"""SQLite rows <-> the store's values: for each table, its column list and the one conversion
each way (times as UTC ISO text, JSON as text, enums as their values). Every SQLite module reads
and writes rows through these."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from operator import attrgetter
from typing import Any

from gateway import jsontext
from gateway.calls.planner import TimelineWrite
from gateway.calls.record import CallRecord
from gateway.calls.states import CallState
from gateway.events.envelope import Event
from gateway.store.base import (
    CALL_COLUMNS,
    CALL_JSON_FIELDS,
    CALL_TIME_FIELDS,
    AttemptRecord,
    Delivery,
    EndpointHealth,
    TimelineEntry,
)
from gateway.store.values import EVENT_ALIASES, EVENT_COLUMNS, upsert_call_sql


@lru_cache(maxsize=1024)
def ts(value: datetime | None) -> str | None:
    """Stored time text (UTC, microseconds). Cached: one transaction writes the same `now` into
    several columns and rows, and formatting costs ~2 us each time."""
    if value is None:
        return None
    if value.tzinfo is not UTC:  # every time the gateway makes is already aware UTC
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def parse_time(value: str) -> datetime:
    """`parse_ts` for a NOT NULL column."""
    return datetime.fromisoformat(value)


def dumps(value: Any) -> str:
    if not value and isinstance(value, dict):
        return "{}"
    return jsontext.dumps(value)


def record_from_row(row: sqlite3.Row) -> CallRecord:
    values = dict(row)
    for name in CALL_TIME_FIELDS:
        values[name] = parse_ts(values[name])
    for name in CALL_JSON_FIELDS:
        text = values[name]
        values[name] = {} if text == "{}" else jsontext.loads(text)
    values["state"] = CallState(values["state"])
    values["voicemail"] = bool(values["voicemail"])
    return CallRecord(**values)


_CALL_VALUES = attrgetter(*CALL_COLUMNS)
_TIME_AT = tuple(CALL_COLUMNS.index(name) for name in CALL_TIME_FIELDS)
_JSON_AT = tuple(CALL_COLUMNS.index(name) for name in CALL_JSON_FIELDS)
_STATE_AT = CALL_COLUMNS.index("state")
_VOICEMAIL_AT = CALL_COLUMNS.index("voicemail")


def record_params(record: CallRecord) -> list[Any]:
    """The `calls` row of a record, in `CALL_COLUMNS` order."""
    values = list(_CALL_VALUES(record))
    for at in _TIME_AT:
        values[at] = ts(values[at])
    for at in _JSON_AT:
        values[at] = dumps(values[at])
    values[_STATE_AT] = values[_STATE_AT].value
    values[_VOICEMAIL_AT] = int(values[_VOICEMAIL_AT])
    return values


UPSERT_CALL = upsert_call_sql(lambda n: "?")

INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, event_seq, subscription, workflow_run_id, order_key, status, attempts,"
    " next_attempt_at, lease_owner, lease_until, lease_id, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?)"
)
"""A pending delivery row: (id, event seq, subscription, run, order key, due at, lease owner,
lease until, lease id, created at, updated at)."""

INSERT_TIMELINE = (
    "INSERT INTO call_timeline (workflow_run_id, received_at, source, kind, outcome, raw_status, state, sequence, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def insert_timeline(conn: sqlite3.Connection, entries: Sequence[TimelineWrite]) -> None:
    """Write timeline entries, in order."""
    conn.executemany(
        INSERT_TIMELINE,
        [
            (
                e.run_id,
                ts(e.received_at),
                e.source,
                e.kind,
                e.outcome,
                e.raw_status,
                e.state,
                e.sequence,
                dumps(e.data),
            )
            for e in entries
        ],
    )


def event_from_row(row: sqlite3.Row, prefix: str = "") -> Event:
    """An event from its own row, or (`prefix`) from a delivery row joined with it."""
    kind, run, at, data, event_id, seq = EVENT_ALIASES if prefix else EVENT_COLUMNS
    return Event(
        type=row[kind],
        workflow_run_id=row[run],
        occurred_at=parse_time(row[at]),
        data_json=row[data],
        id=row[event_id],
        seq=row[seq],
    )


def delivery_from_row(row: sqlite3.Row, *, with_event: bool = False) -> Delivery:
    return Delivery(
        id=row["id"],
        event_seq=row["event_seq"],
        subscription=row["subscription"],
        workflow_run_id=row["workflow_run_id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=parse_time(row["next_attempt_at"]),
        created_at=parse_time(row["created_at"]),
        updated_at=parse_time(row["updated_at"]),
        first_attempt_at=parse_ts(row["first_attempt_at"]),
        last_attempt_at=parse_ts(row["last_attempt_at"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        event=event_from_row(row, "e_") if with_event else None,
        order_key=row["order_key"],
        first_attempted_at=parse_ts(row["first_attempted"]) if "first_attempted" in row.keys() else None,  # noqa: SIM118 (`in` on a Row looks at its values)
    )


def health_from_row(row: sqlite3.Row) -> EndpointHealth:
    return EndpointHealth(
        subscription=row["subscription"],
        consecutive_failures=row["consecutive_failures"],
        first_failure_at=parse_ts(row["first_failure_at"]),
        disabled_at=parse_ts(row["disabled_at"]),
        disabled_reason=row["disabled_reason"],
    )


INSERT_ATTEMPT = (
    "INSERT INTO delivery_attempts (delivery_id, attempt_id, attempted_at, outcome, status, latency_ms, error,"
    " response, request) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def attempt_params(delivery_id: str, attempt: AttemptRecord) -> tuple[Any, ...]:
    """A `delivery_attempts` row, in `INSERT_ATTEMPT` order."""
    return (
        delivery_id,
        attempt.id,
        ts(attempt.attempted_at),
        attempt.outcome,
        attempt.status,
        attempt.latency_ms,
        attempt.error,
        attempt.response,
        dumps(attempt.request),
    )


def attempt_from_row(row: sqlite3.Row) -> AttemptRecord:
    return AttemptRecord(
        attempted_at=parse_time(row["attempted_at"]),
        outcome=row["outcome"],
        status=row["status"],
        latency_ms=row["latency_ms"],
        error=row["error"],
        response=row["response"],
        request=jsontext.loads(row["request"]),
    )


def timeline_from_row(row: sqlite3.Row) -> TimelineEntry:
    return TimelineEntry(
        id=row["id"],
        received_at=parse_time(row["received_at"]),
        source=row["source"],
        kind=row["kind"],
        outcome=row["outcome"],
        raw_status=row["raw_status"],
        state=row["state"],
        sequence=row["sequence"],
        data=jsontext.loads(row["data"]),
    )
