"""The values the store traffics in (every backend the same): timeline entries, deliveries and
their attempts, endpoint health, the direct dispatch, and the pure helpers the outbox's
transactions share."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from gateway.calls.record import isoformat
from gateway.events.envelope import Event, new_event_id

NONCE_PRUNE_EVERY = timedelta(seconds=60)  # how often a claim also deletes the expired ones

CALL_JSON_FIELDS = ("initial_context", "gathered_context", "annotations", "cost_info", "media")
CALL_TIME_FIELDS = ("started_at", "answered_at", "ended_at", "created_at", "updated_at")
CALL_COLUMNS = (
    "workflow_run_id",
    "workflow_id",
    "user_id",
    "provider",
    "provider_call_id",
    "state",
    "from_number",
    "to_number",
    "direction",
    "started_at",
    "answered_at",
    "ended_at",
    "duration",
    "voicemail",
    "answered_by",
    "last_sequence",
    *CALL_JSON_FIELDS,
    "created_at",
    "updated_at",
)


def upsert_call_sql(placeholder: Callable[[int], str]) -> str:
    """The call record's upsert, every column in `CALL_COLUMNS` order; `placeholder(n)` is the
    backend's n-th parameter (`?` on SQLite, `$n` on PostgreSQL)."""
    values = ", ".join(placeholder(i) for i in range(1, len(CALL_COLUMNS) + 1))
    return (
        f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({values}) "
        "ON CONFLICT (workflow_run_id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in CALL_COLUMNS if c != "workflow_run_id")
    )


EVENT_COLUMNS = ("type", "workflow_run_id", "occurred_at", "data", "id", "seq")
"""An event row's columns, in this order in `EVENT_ALIASES`."""
EVENT_ALIASES = ("e_type", "e_run", "e_at", "e_data", "e_id", "e_seq")
"""The same columns as a delivery row joined with its event names them (`DELIVERY_COLUMNS`)."""
DELIVERY_COLUMNS = "SELECT d.*, " + ", ".join(
    f"e.{column} AS {alias}" for column, alias in zip(EVENT_COLUMNS, EVENT_ALIASES, strict=True)
)
DELIVERY_SELECT = DELIVERY_COLUMNS + " FROM deliveries d JOIN events e ON e.seq = d.event_seq"
"""A delivery row with its event's columns (`e_*`), as each backend's `delivery_from_row` reads it."""
DELIVERY_VIEW = (
    DELIVERY_COLUMNS + ", (SELECT MIN(a.attempted_at) FROM delivery_attempts a WHERE a.delivery_id = d.id)"
    " AS first_attempted FROM deliveries d JOIN events e ON e.seq = d.event_seq"
)
"""`DELIVERY_SELECT` with the very first attempt's time, for the listings people read."""
"""The `calls` table's columns, in one order for every backend (`CallRecord` field names)."""


@dataclass
class TimelineEntry:
    """One accepted callback or gateway activity in a call's timeline."""

    id: int
    received_at: datetime
    source: str
    kind: str
    outcome: str
    raw_status: str | None = None
    state: str | None = None
    sequence: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": isoformat(self.received_at),
            "source": self.source,
            "kind": self.kind,
            "outcome": self.outcome,
            "raw_status": self.raw_status,
            "state": self.state,
            "sequence": self.sequence,
            "data": self.data,
        }


@dataclass
class Delivery:
    """One event bound for one subscription: the outbox row. `id` is the stable `webhook-id`."""

    id: str
    event_seq: int
    subscription: str
    workflow_run_id: str | None
    status: str  # pending | succeeded | failed | dead
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    first_attempt_at: datetime | None = None  # the current schedule's first attempt (a retry or replay starts one)
    last_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    event: Event | None = None
    order_key: str | None = None  # the call whose events go one at a time (ordered subscriptions)
    first_attempted_at: datetime | None = None  # the very first attempt, whatever retries came after (read views only)
    lease_id: str | None = None  # the lease it was handed out under: its finish counts only under it

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subscription": self.subscription,
            "workflow_run_id": self.workflow_run_id,
            "event_id": self.event.id if self.event else None,
            "event_type": self.event.type if self.event else None,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": isoformat(self.next_attempt_at) if self.status == "pending" else None,
            "first_attempt_at": isoformat(self.first_attempted_at or self.first_attempt_at),
            "schedule_started_at": isoformat(self.first_attempt_at),  # total_timeout counts from here
            "last_attempt_at": isoformat(self.last_attempt_at),
            "last_status": self.last_status,
            "last_error": self.last_error,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }


@dataclass
class AttemptRecord:
    """One recorded attempt (secrets already redacted by the sender)."""

    attempted_at: datetime
    outcome: str
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response: str | None = None
    request: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: new_event_id("att"))  # recorded once, however often its finish is written

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "attempted_at": isoformat(self.attempted_at),
            "outcome": self.outcome,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "response": self.response,
            "request": self.request,
        }


@dataclass
class DeliveryResult:
    """What the worker decided after an attempt; `finish_delivery` stores it in one transaction."""

    status: str  # pending (retry later) | succeeded | failed | dead
    attempt: AttemptRecord
    next_attempt_at: datetime | None = None
    gathered_context: dict[str, Any] | None = None  # response mapping for the call
    endpoint_ok: bool | None = None  # True resets the endpoint's failure streak, False extends it


@dataclass
class EndpointHealth:
    """A subscription's failure streak and whether it was disabled for it."""

    subscription: str
    consecutive_failures: int = 0
    first_failure_at: datetime | None = None
    disabled_at: datetime | None = None
    disabled_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "consecutive_failures": self.consecutive_failures,
            "first_failure_at": isoformat(self.first_failure_at),
            "disabled_at": isoformat(self.disabled_at),
            "disabled_reason": self.disabled_reason,
        }


Fanout = Callable[[Event], Sequence[tuple[str, bool]]]
"""(subscription name, ordered) for every subscription an event goes to."""


@dataclass(frozen=True)
class DirectDispatch:
    """A delivery worker in this process that takes new deliveries without claiming them.

    A transaction that writes a delivery row (an event's fan-out) or finishes one whose call has
    a next event waiting leases that row to `owner` in the same transaction, when the worker has
    `room(subscription)` for it and the call's order allows, and after the commit hands the
    leased rows to `deliver`. That spares each delivery a claim transaction; the rows it does
    not take wait in the outbox for a claim, as before, and a lease still expires if the process
    dies. A store leases at most `room` rows of a subscription in one group commit; rows leased
    by a commit whose hand-over the worker has not seen yet can add one group's worth.

    `room` runs inside the store's transaction (on the SQLite writer's thread): it must be cheap
    and safe to call from another thread. `deliver` runs on the event loop.
    """

    owner: str
    lease_seconds: float
    room: Callable[[str], int]
    deliver: Callable[[list[Delivery]], None]


@dataclass
class HealthChange:
    """What a batch of finished attempts does to one endpoint's failure streak: restart it (a
    success), then count the failures after the last success (all of them, without one)."""

    subscription: str
    reset: bool = False
    failures: int = 0
    first_failure_at: datetime | None = None


def health_changes(items: Sequence[tuple[Delivery, DeliveryResult]]) -> list[HealthChange]:
    """The net effect of `items`, in order, on each endpoint's streak (pure)."""
    changes: dict[str, HealthChange] = {}
    for delivery, result in items:
        if result.endpoint_ok is None:
            continue
        change = changes.get(delivery.subscription)
        if change is None:
            change = changes[delivery.subscription] = HealthChange(delivery.subscription)
        if result.endpoint_ok:
            change.reset, change.failures, change.first_failure_at = True, 0, None
        else:
            change.failures += 1
            if change.first_failure_at is None:
                change.first_failure_at = result.attempt.attempted_at
    return list(changes.values())


LATE_FINISH = "finished after its lease was lost (taken over, released or finished): the delivery was not changed"
"""What the record of an attempt that came back too late says (`finish_deliveries`)."""


def late_attempt(attempt: AttemptRecord) -> AttemptRecord:
    """The record of an attempt whose finish lost its lease: kept, saying so."""
    return replace(attempt, error=f"{attempt.error}; {LATE_FINISH}" if attempt.error else LATE_FINISH)


def new_lease_id() -> str:
    """A fresh lease id: every lease a transaction hands out carries one (`Delivery.lease_id`)."""
    return secrets.token_hex(8)


T = TypeVar("T")


def share_out(rows: Mapping[str, Sequence[T]], limit: int) -> list[T]:
    """Up to `limit` of the rows, taken in turns: each subscription's first, then each one's
    second, and so on (each list oldest first). Pure."""
    picked: list[T] = []
    lists = [list(each) for each in rows.values() if each]
    depth = 0
    while lists and len(picked) < limit:
        for each in lists:
            if depth < len(each) and len(picked) < limit:
                picked.append(each[depth])
        depth += 1
        lists = [each for each in lists if depth < len(each)]
    return picked


def clamp_limit(limit: int) -> int:
    return max(1, min(int(limit), 500))
