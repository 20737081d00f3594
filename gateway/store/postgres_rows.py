"""PostgreSQL rows <-> the store's values: for each table, its column list and the one
conversion each way (asyncpg gives times and JSON as Python values already). Every PostgreSQL
module reads and writes rows through these."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from gateway import jsontext
from gateway.calls.planner import TimelineWrite
from gateway.calls.record import CallRecord
from gateway.calls.states import CallState
from gateway.events.envelope import Event
from gateway.store.base import (
    CALL_COLUMNS,
    Delivery,
    EndpointHealth,
)
from gateway.store.values import EVENT_ALIASES, EVENT_COLUMNS, upsert_call_sql

UPSERT_CALL = upsert_call_sql(lambda n: f"${n}")


def record_from_row(row: asyncpg.Record) -> CallRecord:
    values = {name: row[name] for name in CALL_COLUMNS}
    values["state"] = CallState(values["state"])
    return CallRecord(**values)


def record_params(record: CallRecord) -> list[Any]:
    out = []
    for name in CALL_COLUMNS:
        value = getattr(record, name)
        if name == "state":
            value = value.value
        out.append(value)
    return out


def event_from_row(row: asyncpg.Record, prefix: str = "") -> Event:
    """An event from its own row, or (`prefix`) from a delivery row joined with it."""
    kind, run, at, data, event_id, seq = EVENT_ALIASES if prefix else EVENT_COLUMNS
    return Event(
        type=row[kind], workflow_run_id=row[run], occurred_at=row[at], data=row[data], id=row[event_id], seq=row[seq]
    )


def delivery_from_row(row: asyncpg.Record, *, with_event: bool = False) -> Delivery:
    return Delivery(
        id=row["id"],
        event_seq=row["event_seq"],
        subscription=row["subscription"],
        workflow_run_id=row["workflow_run_id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        first_attempt_at=row["first_attempt_at"],
        last_attempt_at=row["last_attempt_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        event=event_from_row(row, "e_") if with_event else None,
        order_key=row["order_key"],
        lease_id=row["lease_id"],
        first_attempted_at=row["first_attempted"] if "first_attempted" in row.keys() else None,  # noqa: SIM118 (`in` on a Record looks at its values)
    )


TimelineRow = tuple[str, datetime, str, str, str, "str | None", "str | None", "int | None", str]
"""A `call_timeline` row: run, received at, source, kind, outcome, raw status, state, sequence, data (JSON text)."""


def timeline_row(entry: TimelineWrite) -> TimelineRow:
    """A timeline entry as `_INSERT_EVENTS` takes it."""
    return (
        entry.run_id,
        entry.received_at,
        entry.source,
        entry.kind,
        entry.outcome,
        entry.raw_status,
        entry.state,
        entry.sequence,
        jsontext.dumps(entry.data),
    )


def health_from_row(row: asyncpg.Record) -> EndpointHealth:
    return EndpointHealth(
        subscription=row["subscription"],
        consecutive_failures=row["consecutive_failures"],
        first_failure_at=row["first_failure_at"],
        disabled_at=row["disabled_at"],
        disabled_reason=row["disabled_reason"],
    )
