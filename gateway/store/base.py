"""The one `Store` interface every backend implements, and the values it traffics in."""

from __future__ import annotations

import abc
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.planner import AppliedUpdate, event_data
from gateway.calls.record import CallRecord, isoformat
from gateway.calls.seed import CallSeed
from gateway.events.envelope import Event, new_event_id
from gateway.store.campaigns import Campaign, CampaignContact, CampaignEvent
from gateway.store.errors import ClaimLost, StoreError, claim_lost

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


class Store(abc.ABC):
    """Durable calls, timelines, events and their deliveries. All methods are async and never
    block the loop. Events and their delivery rows are written in the same transaction."""

    fanout: Fanout = staticmethod(lambda event: ())  # type: ignore[assignment]
    on_deliveries: Callable[[], None] = staticmethod(lambda: None)  # type: ignore[assignment]

    def set_fanout(self, fanout: Fanout, on_deliveries: Callable[[], None] | None = None) -> None:
        """Route every event written from now on to `fanout`'s subscriptions; call
        `on_deliveries` (on the loop) after a commit that queued deliveries."""
        self.fanout = fanout
        if on_deliveries is not None:
            self.on_deliveries = on_deliveries

    dispatch: DirectDispatch | None = None

    def set_dispatch(self, dispatch: DirectDispatch | None) -> None:
        """Lease new deliveries to `dispatch` as they are written (None: every row waits for a claim)."""
        self.dispatch = dispatch

    control_handler: Callable[[str, str, dict[str, Any]], None] | None = None

    def set_control_handler(self, handler: Callable[[str, str, dict[str, Any]], None]) -> None:
        """Receive `(run_id, action, data)` control requests published by any instance."""
        self.control_handler = handler

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

    @abc.abstractmethod
    async def apply_update(
        self, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None
    ) -> AppliedUpdate:
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
        session: str | None = None,
    ) -> list[Event]:
        """Append a gateway-side timeline entry (media start/end, agent messages), merge
        context, and write `events` (type, extra data) in one transaction. Unknown run: StoreError.

        `session`: the media session writing, held to `gateway.store.activity.admit_activity`
        (one session per call, nothing changes after the call's end; `media.connected` to a
        finished call raises `CallEnded`). Returns the events written."""

    @abc.abstractmethod
    async def claim_nonce(self, nonce: str, *, expires_at: datetime, now: datetime) -> bool:
        """True the first time `nonce` (a signed request's one-time id, e.g. a Vonage JWT's
        `jti`) is claimed, or once its earlier claim expired; False for a replay. Claims hold
        until `expires_at` across restarts and instances; expired ones are pruned as new ones
        are made."""

    @abc.abstractmethod
    async def get_call(self, run_id: str) -> CallRecord | None:
        """The call record, or None."""

    @abc.abstractmethod
    async def get_timeline(self, run_id: str) -> list[TimelineEntry]:
        """Every timeline entry of a call, oldest first."""

    @abc.abstractmethod
    async def list_calls(
        self, *, state: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[CallRecord], str | None]:
        """Calls newest first, and the cursor of the next page (None at the end)."""

    @abc.abstractmethod
    async def list_events(self, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None) -> list[Event]:
        """Stored events in order."""

    # -- deliveries (the transactional outbox) --------------------------------------------
    @abc.abstractmethod
    async def claim_deliveries(
        self, owner: str, *, now: datetime, lease_seconds: float, capacity: Mapping[str, int], limit: int = 200
    ) -> list[Delivery]:
        """Lease due pending deliveries (with their events) to `owner`.

        At most `capacity[subscription]` per subscription (absent: none), each subscription's
        oldest first, and the `limit` shared out among them in turns (`share_out`): one
        subscription's backlog does not hide another's rows. A delivery whose subscription is
        ordered waits while an earlier one of the same call is pending. Due means
        `next_attempt_at <= now`; leases run on the store's clock (PostgreSQL's `now()`, not
        the callers'), and an expired lease makes a row due again (at-least-once).
        """

    async def finish_delivery(self, delivery: Delivery, owner: str, result: DeliveryResult) -> EndpointHealth | None:
        """`finish_deliveries` for one delivery."""
        return (await self.finish_deliveries(owner, [(delivery, result)]))[0]

    @abc.abstractmethod
    async def finish_deliveries(
        self, owner: str, items: Sequence[tuple[Delivery, DeliveryResult]]
    ) -> list[EndpointHealth | None]:
        """For each (delivery, result), in order: record the attempt, move the row on, merge
        response mapping into the call, update the endpoint's failure streak; all in one
        transaction. A delivery that reached its end (not `pending`) lets its call's next event
        go: leased to the direct dispatch when it takes it, else woken for a claim. Returns each
        item's endpoint health after the whole batch.

        Only under the lease the delivery was handed out under (`owner` and `delivery.lease_id`):
        a finish that lost it (the lease expired and the row was taken over, released, or
        finished) changes nothing; its attempt is kept as history, marked late, and its item
        is None. An attempt already recorded (the same `AttemptRecord.id`: a batch written again
        after its answer was lost) is not recorded again. A retry or replay asked for while the
        attempt was in flight (`resend`) makes the row pending again, due at once, its schedule
        afresh."""

    @abc.abstractmethod
    async def release_leases(self, owner: str, delivery_ids: Sequence[str] | None = None) -> int:
        """Give up `owner`'s leases (graceful shutdown), or only those of `delivery_ids` (rows
        claimed but not sent, due again at once); returns how many."""

    @abc.abstractmethod
    async def list_deliveries(
        self,
        *,
        status: str | None = None,
        subscription: str | None = None,
        run_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Delivery], str | None]:
        """Deliveries newest first, and the next page's cursor."""

    @abc.abstractmethod
    async def get_delivery(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        """A delivery with its event and every attempt, oldest first."""

    @abc.abstractmethod
    async def retry_delivery(self, delivery_id: str, *, now: datetime) -> Delivery | None:
        """Make a delivery pending and due now, its retry schedule started afresh. One whose
        attempt is in flight (leased, the lease not expired) is marked instead and goes again
        once that attempt finishes (see `finish_deliveries`); replays do the same."""

    @abc.abstractmethod
    async def replay_deliveries(
        self,
        subscription: str,
        *,
        since: datetime,
        until: datetime,
        now: datetime,
        matches: Callable[[str], bool],
        ordered: bool,
    ) -> int:
        """Queue again every event of [since, until) that `matches` for `subscription`: existing
        rows go back to pending (same webhook-id), events with no row get one. Returns the count."""

    @abc.abstractmethod
    async def endpoint_health(self) -> dict[str, EndpointHealth]:
        """The failure streak and disabled state of every subscription that has one."""

    @abc.abstractmethod
    async def set_endpoint_disabled(self, subscription: str, *, reason: str | None, now: datetime) -> list[Event]:
        """Disable (reason given) or re-enable (None) a subscription. Disabling writes a
        `webhook.endpoint_disabled` event in the same transaction."""

    @abc.abstractmethod
    async def outbox_stats(self, *, now: datetime) -> dict[str, Any]:
        """Pending count and the age in seconds of the oldest pending delivery."""

    @abc.abstractmethod
    async def pending_subscriptions(self) -> set[str]:
        """The subscriptions that have pending deliveries (whatever their lease)."""

    # -- campaigns (gateway.dial) ----------------------------------------------------------
    # Not abstract: a backend without them refuses campaigns with a StoreError, calls work.
    supports_campaigns: bool = False

    def _no_campaigns(self) -> StoreError:
        return StoreError(f"campaigns are not supported by the {type(self).__name__} backend yet")

    async def create_campaign(
        self, campaign: Campaign, contacts: Sequence[CampaignContact], events: Sequence[CampaignEvent] = ()
    ) -> None:
        """Write a campaign, its contacts and `events` in one transaction."""
        raise self._no_campaigns()

    async def get_campaign(self, campaign_id: str) -> Campaign | None:
        """A campaign with its contact counts and minutes used, or None."""
        raise self._no_campaigns()

    async def list_campaigns(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Campaign], str | None]:
        """Campaigns newest first (with counts), and the next page's cursor."""
        raise self._no_campaigns()

    async def list_campaign_contacts(
        self, campaign_id: str, *, status: str | None = None, limit: int = 100, after: int = -1
    ) -> list[CampaignContact]:
        """A campaign's contacts by position, those after position `after`."""
        raise self._no_campaigns()

    async def active_campaigns(self) -> list[Campaign]:
        """Running and paused campaigns, with counts."""
        raise self._no_campaigns()

    async def campaigns_for_webhooks(self, ids: Sequence[str] = ()) -> list[Campaign]:
        """Campaigns with inline webhooks that can still cause events (active, or a contact
        being dialed), and those of `ids` (e.g. with deliveries still pending)."""
        raise self._no_campaigns()

    async def campaign_calls_in_flight(self) -> list[tuple[CampaignContact, CallRecord | None]]:
        """Every contact being dialed, with its current call's record (None: not written yet)."""
        raise self._no_campaigns()

    async def claim_campaign_contacts(
        self, campaign_id: str, run_ids: Sequence[str], *, now: datetime
    ) -> list[CampaignContact]:
        """Mark up to len(`run_ids`) due contacts `dialing` with those run ids, count the calls
        against `max_calls`, in one transaction; only while the campaign is running."""
        raise self._no_campaigns()

    async def release_campaign_claim(self, contact: CampaignContact, *, now: datetime) -> bool:
        """Undo a claim whose call was never written (the process stopped before dialing)."""
        raise self._no_campaigns()

    async def finish_campaign_attempt(
        self,
        contact: CampaignContact,
        *,
        status: str,
        outcome: str,
        next_attempt_at: datetime | None,
        now: datetime,
        events: Sequence[CampaignEvent] = (),
    ) -> bool:
        """Move a `dialing` contact on after its call ended, with `events`, once: False when
        the contact is no longer dialing that run."""
        raise self._no_campaigns()

    async def update_campaign(
        self,
        campaign_id: str,
        *,
        from_statuses: Sequence[str],
        status: str,
        now: datetime,
        events: Callable[[Campaign], Sequence[CampaignEvent]] | None = None,
        contacts_from: Sequence[str] = (),
        contacts_to: str | None = None,
        **fields: Any,
    ) -> Campaign | None:
        """Move a campaign from one of `from_statuses` to `status` (contacts in `contacts_from`
        to `contacts_to`, columns `quota`, `error`, `error_code`, `started_at`, `completed_at`
        from `fields`), in one transaction with the events `events(updated campaign)` returns
        (pure and cheap: it runs inside the transaction). None when the campaign is not in
        one of `from_statuses`."""
        raise self._no_campaigns()


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


__all__ = [
    "AppliedUpdate",
    "AttemptRecord",
    "CallSeed",
    "ClaimLost",
    "Delivery",
    "DeliveryResult",
    "DirectDispatch",
    "EndpointHealth",
    "Fanout",
    "HealthChange",
    "Store",
    "StoreError",
    "TimelineEntry",
    "claim_lost",
    "clamp_limit",
    "event_data",
    "health_changes",
    "late_attempt",
    "new_lease_id",
    "share_out",
]
