"""The one `Store` every backend implements: calls, the outbox and campaigns
(`gateway.store.interfaces`), with the wiring it is given. The values it traffics in are in
`gateway.store.values`; they are re-exported here."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from gateway.calls.planner import AppliedUpdate, event_data
from gateway.calls.record import utcnow
from gateway.calls.seed import CallSeed
from gateway.events.envelope import Event
from gateway.store.errors import ClaimLost, StoreError, claim_lost
from gateway.store.interfaces import CallStore, CampaignStore, Outbox
from gateway.store.values import (
    CALL_COLUMNS,
    CALL_JSON_FIELDS,
    CALL_TIME_FIELDS,
    LATE_FINISH,
    NONCE_PRUNE_EVERY,
    AttemptRecord,
    Delivery,
    DeliveryResult,
    DirectDispatch,
    EndpointHealth,
    Fanout,
    HealthChange,
    TimelineEntry,
    clamp_limit,
    health_changes,
    late_attempt,
    new_lease_id,
    share_out,
)

ControlHandler = Callable[[str, str, dict[str, Any]], None]
"""Receives `(run_id, action, data)` control requests (`Store.publish_control`)."""


def no_fanout(event: Event) -> Sequence[tuple[str, bool]]:
    """The fan-out of a store not wired to any subscription: none."""
    return ()


def no_wake() -> None:
    """Nobody to wake."""


@dataclass(frozen=True)
class StoreWiring:
    """What a store calls out to: `fanout` routes each event written to its subscriptions;
    `on_deliveries` (on the loop) after a commit that queued deliveries for a claim; `dispatch`
    leases new deliveries to this process's worker (None: every row waits for a claim);
    `control_handler` receives control requests published by any instance; `clock` is the
    store's own time (the records' stamps and, on SQLite, its leases: a transaction the writer
    process runs reads that process's clock)."""

    fanout: Fanout = no_fanout
    on_deliveries: Callable[[], None] = no_wake
    dispatch: DirectDispatch | None = None
    control_handler: ControlHandler | None = None
    clock: Callable[[], datetime] = utcnow


class Store(CallStore, Outbox, CampaignStore):
    """Durable calls, timelines, events and their deliveries, and campaigns. All methods are
    async and never block the loop. Events and their delivery rows are written in the same
    transaction. The wiring is given to the constructor; an app that builds its worker after its
    store (the worker needs the store) completes it with `set_fanout`, `set_dispatch` and
    `set_control_handler`, before the store opens."""

    def __init__(self, *, wiring: StoreWiring | None = None) -> None:
        self.wiring = wiring or StoreWiring()

    def now(self) -> datetime:
        """The store's clock (`StoreWiring.clock`)."""
        return self.wiring.clock()

    @property
    def fanout(self) -> Fanout:
        return self.wiring.fanout

    @property
    def on_deliveries(self) -> Callable[[], None]:
        return self.wiring.on_deliveries

    @property
    def dispatch(self) -> DirectDispatch | None:
        return self.wiring.dispatch

    @property
    def control_handler(self) -> ControlHandler | None:
        return self.wiring.control_handler

    def set_fanout(self, fanout: Fanout, on_deliveries: Callable[[], None] | None = None) -> None:
        """Route every event written from now on to `fanout`'s subscriptions; call
        `on_deliveries` (on the loop) after a commit that queued deliveries."""
        self.wiring = replace(self.wiring, fanout=fanout, on_deliveries=on_deliveries or self.wiring.on_deliveries)

    def set_dispatch(self, dispatch: DirectDispatch | None) -> None:
        """Lease new deliveries to `dispatch` as they are written (None: every row waits for a claim)."""
        self.wiring = replace(self.wiring, dispatch=dispatch)

    def set_control_handler(self, handler: ControlHandler) -> None:
        """Receive `(run_id, action, data)` control requests published by any instance."""
        self.wiring = replace(self.wiring, control_handler=handler)

    async def hold_leadership(self, name: str) -> bool:
        """True while this process is the one instance doing `name` (e.g. the campaign runner).
        A single-process store always leads; a shared one elects one holder per database."""
        return True

    async def publish_control(self, run_id: str, action: str, data: dict[str, Any] | None = None) -> None:
        """Ask whichever instance owns `run_id`'s media to act (`clear`, `hangup`). One process
        by default; a shared backend (PostgreSQL) reaches every instance."""
        if self.control_handler is not None:
            self.control_handler(run_id, action, dict(data or {}))

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise `StoreError` unless the store answers a trivial query."""


__all__ = [
    "CALL_COLUMNS",
    "CALL_JSON_FIELDS",
    "CALL_TIME_FIELDS",
    "LATE_FINISH",
    "NONCE_PRUNE_EVERY",
    "AppliedUpdate",
    "AttemptRecord",
    "CallSeed",
    "CallStore",
    "CampaignStore",
    "ClaimLost",
    "ControlHandler",
    "Delivery",
    "DeliveryResult",
    "DirectDispatch",
    "EndpointHealth",
    "Fanout",
    "HealthChange",
    "Outbox",
    "Store",
    "StoreError",
    "StoreWiring",
    "TimelineEntry",
    "claim_lost",
    "clamp_limit",
    "event_data",
    "health_changes",
    "late_attempt",
    "new_lease_id",
    "no_fanout",
    "share_out",
]
