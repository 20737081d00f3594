"""The store's three interfaces, one per concern: calls (`CallStore`), the transactional outbox
(`Outbox`) and campaigns (`CampaignStore`). `Store` (gateway.store.base) is all three with the
wiring; a backend that lacks a method of any cannot be constructed (and fails type checks)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.planner import AppliedUpdate
from gateway.calls.record import CallRecord
from gateway.calls.seed import CallSeed
from gateway.events.envelope import Event
from gateway.store.campaigns import Campaign, CampaignContact, CampaignEvent
from gateway.store.values import AttemptRecord, Delivery, DeliveryResult, EndpointHealth, TimelineEntry


class CallStore(abc.ABC):
    """Calls, their timelines and the events they emit; one-time nonces."""

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


class Outbox(abc.ABC):
    """The transactional outbox: each event's delivery rows, claimed under leases, finished with
    their attempts; endpoint health."""

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


class CampaignStore(abc.ABC):
    """Campaigns (gateway.dial): their contacts and claims, each change with its events."""

    supports_campaigns = True
    """Every `Store` has them (a backend without cannot be constructed); kept for the callers
    that still ask."""

    @abc.abstractmethod
    async def create_campaign(
        self, campaign: Campaign, contacts: Sequence[CampaignContact], events: Sequence[CampaignEvent] = ()
    ) -> None:
        """Write a campaign, its contacts and `events` in one transaction."""

    @abc.abstractmethod
    async def get_campaign(self, campaign_id: str) -> Campaign | None:
        """A campaign with its contact counts and minutes used, or None."""

    @abc.abstractmethod
    async def list_campaigns(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Campaign], str | None]:
        """Campaigns newest first (with counts), and the next page's cursor."""

    @abc.abstractmethod
    async def list_campaign_contacts(
        self, campaign_id: str, *, status: str | None = None, limit: int = 100, after: int = -1
    ) -> list[CampaignContact]:
        """A campaign's contacts by position, those after position `after`."""

    @abc.abstractmethod
    async def active_campaigns(self) -> list[Campaign]:
        """Running and paused campaigns, with counts."""

    @abc.abstractmethod
    async def campaigns_for_webhooks(self, ids: Sequence[str] = ()) -> list[Campaign]:
        """Campaigns with inline webhooks that can still cause events (active, or a contact
        being dialed), and those of `ids` (e.g. with deliveries still pending)."""

    @abc.abstractmethod
    async def campaign_calls_in_flight(self) -> list[tuple[CampaignContact, CallRecord | None]]:
        """Every contact being dialed, with its current call's record (None: not written yet)."""

    @abc.abstractmethod
    async def claim_campaign_contacts(
        self, campaign_id: str, run_ids: Sequence[str], *, now: datetime
    ) -> list[CampaignContact]:
        """Mark up to len(`run_ids`) due contacts `dialing` with those run ids, count the calls
        against `max_calls`, in one transaction; only while the campaign is running."""

    @abc.abstractmethod
    async def release_campaign_claim(self, contact: CampaignContact, *, now: datetime) -> bool:
        """Undo a claim whose call was never written (the process stopped before dialing)."""

    @abc.abstractmethod
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

    @abc.abstractmethod
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
