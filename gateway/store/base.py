"""The one `Store` interface every backend implements, and the values it traffics in."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.record import CallRecord, isoformat
from gateway.events.envelope import Event


class StoreError(Exception):
    """The store could not do what was asked (unreachable, corrupt, bad cursor...)."""


@dataclass
class CallSeed:
    """What the gateway knows of a call before or besides the provider's callbacks.

    Used when the call is created, and to fill fields the provider left empty.
    """

    workflow_id: str | None = None
    user_id: str | None = None
    provider: str | None = None
    provider_call_id: str | None = None
    direction: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    initial_context: dict[str, Any] = field(default_factory=dict)

    def fill(self, record: CallRecord) -> None:
        """Write every seed value whose record field is still empty."""
        for name in ("workflow_id", "user_id", "provider", "provider_call_id", "direction", "from_number", "to_number"):
            value = getattr(self, name)
            if value and not getattr(record, name):
                setattr(record, name, value)
        if self.initial_context and not record.initial_context:
            record.initial_context = dict(self.initial_context)


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
class AppliedUpdate:
    """What `Store.apply_update` did: the record as stored, the events written, and why."""

    record: CallRecord
    events: list[Event]
    outcome: str
    created: bool


class Store(abc.ABC):
    """Durable calls, timelines and events. All methods are async and never block the loop."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise `StoreError` unless the store answers a trivial query."""

    @abc.abstractmethod
    async def apply_update(self, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None) -> AppliedUpdate:
        """Apply one verified provider callback in one transaction.

        Finds the call by `run_id`, else by the provider's call id, else creates it (minting a
        run id when `run_id` is None); appends the callback to the timeline; moves the state
        by the lifecycle rules; writes the resulting events. Returns once committed.
        """

    @abc.abstractmethod
    async def record_activity(
        self,
        run_id: str,
        *,
        source: str,
        kind: str,
        data: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]] = (),
        gathered_context: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
        media: dict[str, Any] | None = None,
    ) -> list[Event]:
        """Append a gateway-side timeline entry (media start/end, agent messages), merge
        context, and write `events` (type, extra data) in one transaction. Unknown run: StoreError."""

    @abc.abstractmethod
    async def get_call(self, run_id: str) -> CallRecord | None:
        """The call record, or None."""

    @abc.abstractmethod
    async def get_timeline(self, run_id: str) -> list[TimelineEntry]:
        """Every timeline entry of a call, oldest first."""

    @abc.abstractmethod
    async def list_calls(self, *, state: str | None = None, limit: int = 50, cursor: str | None = None) -> tuple[list[CallRecord], str | None]:
        """Calls newest first, and the cursor of the next page (None at the end)."""

    @abc.abstractmethod
    async def list_events(self, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None) -> list[Event]:
        """Stored events in order."""


def event_data(record: CallRecord, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data of a `call.*` event: the whole call record, plus event-specific `detail`."""
    data = record.to_dict()
    if extra:
        data["detail"] = extra
    return data


def clamp_limit(limit: int) -> int:
    return max(1, min(int(limit), 500))


__all__ = [
    "AppliedUpdate",
    "CallSeed",
    "Store",
    "StoreError",
    "TimelineEntry",
    "clamp_limit",
    "event_data",
]
