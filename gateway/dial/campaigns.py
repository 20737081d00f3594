"""Campaign lifecycle: create, pause, resume, cancel, complete, fail, quota. Each change is one
store transaction with the `campaign.*` / `batch.*` events it causes (configured
subscriptions and the campaign's inline webhooks alike).

    running ⇄ paused;  running|paused → completed | failed | canceled  (final)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from gateway.calls import events as ev
from gateway.calls.record import utcnow
from gateway.dial import inline, payloads
from gateway.dial.policy import statistics
from gateway.dial.spec import CampaignSpec
from gateway.errors import ProblemError
from gateway.events.envelope import Event, new_event_id
from gateway.store.base import Store
from gateway.store.campaigns import CONTACT_WAITING, Campaign, CampaignContact, CampaignEvent

log = logging.getLogger("gateway.dial")

ACTIVE = ("running", "paused")


class CampaignError(ProblemError):
    """An API request about a campaign that cannot be done; `status` is the HTTP status."""


def new_campaign_id() -> str:
    """`cmp_` + a lowercase time-ordered id (usable in subscription names)."""
    return new_event_id("cmp").lower()


def _event(
    kind: str, campaign: Campaign, at: datetime, data: dict[str, Any], run_id: str | None = None
) -> CampaignEvent:
    return CampaignEvent(
        Event(type=kind, workflow_run_id=run_id, occurred_at=at, data=data), inline.targets(campaign, kind)
    )


class CampaignManager:
    """The campaign state changes the API and the runner ask for."""

    def __init__(self, store: Store, registry: inline.InlineRegistry, *, now: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.registry = registry
        self.now = now

    async def create(
        self, spec: CampaignSpec, *, provider: str, from_number: str, origin: str
    ) -> tuple[Campaign, str | None, int]:
        """Store the campaign (running) with its contacts and `campaign.started`. Returns the
        campaign, the inline webhooks' signing secret when it was made for this campaign, and
        how many duplicate phone numbers were dropped."""
        now = self.now()
        contacts, dropped = spec.unique_contacts()
        options = spec.options.model_dump(mode="json")
        options["webhooks"] = spec.options.webhooks.urls()
        secret = None
        if options["webhooks"] and not self.registry.settings.secret:
            secret = inline.new_signing_secret()
        campaign = Campaign(
            id=new_campaign_id(),
            name=spec.name,
            workflow_id=spec.workflow_id,
            user_id=spec.user_id,
            provider=provider,
            from_number=from_number,
            status="running",
            options=options,
            origin=origin,
            total=len(contacts),
            created_at=now,
            updated_at=now,
            started_at=now,
            webhook_secret=secret,
            counts={"pending": len(contacts)},
        )
        rows = [
            CampaignContact(campaign_id=campaign.id, position=index, phone=c.phone, name=c.name, context=c.context)
            for index, c in enumerate(contacts)
        ]
        started = _event(ev.CAMPAIGN_STARTED, campaign, now, payloads.campaign_event_data(campaign, resumed=False))
        await self.store.create_campaign(campaign, rows, [started])
        self.registry.register(campaign)
        log.info(
            "campaign %s created: %d contacts via %s, concurrency=%s cps=%s",
            campaign.id,
            len(rows),
            provider,
            options.get("concurrency"),
            options.get("calls_per_second"),
        )
        return campaign, secret, dropped

    async def _get(self, campaign_id: str) -> Campaign:
        campaign = await self.store.get_campaign(campaign_id)
        if campaign is None:
            raise CampaignError(404, f"no campaign {campaign_id[:64]!r}")
        return campaign

    async def _move(
        self,
        campaign_id: str,
        action: str,
        from_statuses: Sequence[str],
        status: str,
        events: Callable[[Campaign, datetime], list[CampaignEvent]],
        **kwargs: Any,  # the store's update_campaign fields
    ) -> Campaign:
        current = await self._get(campaign_id)
        if current.status not in from_statuses:
            raise CampaignError(409, f"cannot {action} a campaign that is {current.status}")
        now = self.now()
        moved = await self.store.update_campaign(
            campaign_id, from_statuses=from_statuses, status=status, now=now, events=lambda c: events(c, now), **kwargs
        )
        if moved is None:
            latest = await self._get(campaign_id)
            raise CampaignError(409, f"cannot {action} a campaign that is {latest.status}")
        log.info("campaign %s %s -> %s", campaign_id, action, status)
        return moved

    async def pause(self, campaign_id: str) -> Campaign:
        return await self._move(
            campaign_id,
            "pause",
            ("running",),
            "paused",
            lambda c, at: [_event(ev.CAMPAIGN_PAUSED, c, at, payloads.campaign_event_data(c))],
        )

    async def resume(self, campaign_id: str) -> Campaign:
        return await self._move(
            campaign_id,
            "resume",
            ("paused",),
            "running",
            lambda c, at: [_event(ev.CAMPAIGN_STARTED, c, at, payloads.campaign_event_data(c, resumed=True))],
        )

    async def cancel(self, campaign_id: str) -> Campaign:
        """Stop for good: waiting contacts are canceled; calls in progress run to their end."""
        return await self._move(
            campaign_id,
            "cancel",
            ACTIVE,
            "canceled",
            lambda c, at: [_event(ev.CAMPAIGN_CANCELED, c, at, payloads.campaign_event_data(c))],
            contacts_from=CONTACT_WAITING,
            contacts_to="canceled",
            completed_at=self.now(),
        )

    async def complete(self, campaign_id: str) -> Campaign | None:
        """Every contact is done: `campaign.completed` and `batch.completed`."""
        now = self.now()
        done = await self.store.update_campaign(
            campaign_id,
            from_statuses=("running",),
            status="completed",
            now=now,
            completed_at=now,
            events=lambda c: [
                _event(ev.CAMPAIGN_COMPLETED, c, now, payloads.campaign_event_data(c)),
                _event(ev.BATCH_COMPLETED, c, now, payloads.batch_completed(c)),
            ],
        )
        if done is not None:
            log.info("campaign %s completed: %s", campaign_id, statistics(done))
        return done

    async def fail(self, campaign_id: str, error: str, code: str) -> Campaign | None:
        """The campaign cannot go on: waiting contacts are skipped; `campaign.failed`, `batch.failed`."""
        now = self.now()
        failed = await self.store.update_campaign(
            campaign_id,
            from_statuses=ACTIVE,
            status="failed",
            now=now,
            completed_at=now,
            error=error,
            error_code=code,
            contacts_from=CONTACT_WAITING,
            contacts_to="skipped",
            events=lambda c: [
                _event(ev.CAMPAIGN_FAILED, c, now, payloads.campaign_event_data(c, error=error, code=code)),
                _event(ev.BATCH_FAILED, c, now, payloads.batch_failed(c, error, code, now)),
            ],
        )
        if failed is not None:
            log.error("campaign %s failed: %s (%s)", campaign_id, error, code)
        return failed

    async def quota_reached(self, campaign: Campaign, quota: str, used: float, limit: float) -> Campaign | None:
        """A limit stops new calls: waiting contacts are skipped; `campaign.quota_reached`. The
        campaign completes once its calls in progress end."""
        now = self.now()
        hit = await self.store.update_campaign(
            campaign.id,
            from_statuses=(campaign.status,),
            status=campaign.status,
            now=now,
            quota=quota,
            contacts_from=CONTACT_WAITING,
            contacts_to="skipped",
            events=lambda c: [
                _event(
                    ev.CAMPAIGN_QUOTA_REACHED,
                    c,
                    now,
                    payloads.campaign_event_data(c, quota=quota, used=used, limit=limit),
                )
            ],
        )
        if hit is not None:
            log.warning("campaign %s reached %s (%s of %s): no new calls", campaign.id, quota, used, limit)
        return hit
