"""The campaign runner: one loop per process that dials campaigns' contacts and settles their
calls, with the store as the only memory, so a restarted process carries on where the last
one stopped without calling anyone twice.

Each tick:
1. settle: every contact being dialed is looked at with its call. A call that ended moves
   the contact on (succeeded, failed, or retry later) with the per-call record, once. A
   claim whose call was never written (the process stopped first) is undone: nobody was
   called. A call written but never given a provider id by a previous process may or may not
   have rung: it waits `orphan_seconds` for a callback to name it, then ends as
   `interrupted` and is never retried. Calls silent for `reconcile_seconds` are asked of the
   provider (a final callback may have arrived while no process listened).
2. drive: each running campaign completes when nothing is left, stops at a quota, waits
   outside its window, and otherwise claims due contacts, at most `concurrency` in progress,
   started `1 / calls_per_second` apart.

A claim marks the contact `dialing` with a fresh run id in one transaction before the call
record is written and the provider asked, so every placed call is found again after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.calls import events as ev
from gateway.calls.lifecycle import CallUpdate
from gateway.calls.record import CallRecord, isoformat, utcnow
from gateway.calls.states import CallState
from gateway.dial import inline, payloads
from gateway.dial.campaigns import CampaignManager
from gateway.dial.dialer import CallRequest, Dialer, DialError
from gateway.dial.policy import Pacer, after_call, classify, quota_reached, window_open
from gateway.dial.spec import CampaignOptions
from gateway.events.envelope import Event
from gateway.providers.rest import ProviderRefused
from gateway.store.base import ClaimLost, Store, StoreError
from gateway.store.campaigns import Campaign, CampaignContact, CampaignEvent
from gateway.tasks import finish_tasks

log = logging.getLogger("gateway.dial")
LEADERSHIP = "campaign-runner"


@dataclass(frozen=True)
class RunnerSettings:
    poll_seconds: float = 0.5
    orphan_seconds: float = 120.0
    reconcile_seconds: float = 600.0
    max_consecutive_refusals: int = 10
    webhook_sync_seconds: float = (
        2.0  # how often every instance syncs campaigns' inline webhooks (inline.InlineRegistry.sync)
    )


class CampaignRunner:
    """Started and stopped by the app's lifespan."""

    def __init__(
        self,
        store: Store,
        dialer: Dialer,
        manager: CampaignManager,
        *,
        settings: RunnerSettings | None = None,
        origin: Callable[[], str | None] = lambda: None,
        draining: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.dialer = dialer
        self.manager = manager
        self.settings = settings or RunnerSettings()
        self.origin = origin
        self.draining = draining
        self.monotonic = monotonic
        self.now = now
        self._pacers: dict[str, Pacer] = {}
        self._claimed: set[str] = set()  # run ids claimed here whose dial has not finished
        self._refusals: dict[str, int] = {}
        self._checked: dict[str, float] = {}  # run id -> when the provider was last asked
        self._hung_up: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[Any] | None = None
        self._webhooks_task: asyncio.Task[Any] | None = None
        self._stopping = False
        self.enabled = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if not getattr(self.store, "supports_campaigns", False):
            log.info("campaigns are off: the %s store does not support them yet", type(self.store).__name__)
            return
        await self.manager.registry.sync(self.store)
        self.enabled = True
        self._loop_task = asyncio.ensure_future(self._run())
        self._webhooks_task = asyncio.ensure_future(self._sync_webhooks())

    async def stop(self, grace: float = 15.0) -> None:
        """Stop claiming; let dials in progress finish within `grace` (a dial cut short is
        found again at the next start)."""
        self._stopping = True
        self._wake.set()
        if self._webhooks_task is not None:
            self._webhooks_task.cancel()
            await asyncio.gather(self._webhooks_task, return_exceptions=True)
        await finish_tasks(self._loop_task, self._tasks, grace)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        leading = False
        while not self._stopping:
            self._wake.clear()
            try:
                # One campaign runner per database: with several instances, the others wait.
                if not await self.store.hold_leadership(LEADERSHIP):
                    if leading or not hasattr(self, "_follower_logged"):
                        log.info("another gateway instance runs the campaigns; this one stands by")
                        self._follower_logged = True
                    leading = False
                    await asyncio.sleep(self.settings.poll_seconds)
                    continue
                if not leading:
                    log.info("this instance runs the campaigns")
                    leading = True
                await self.tick()
            except StoreError as error:
                log.error("campaign tick failed: %s", error)
            except Exception:
                log.exception("campaign tick crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    async def _sync_webhooks(self) -> None:
        """On every instance, leader or not: campaigns' inline webhooks come and go here."""
        while not self._stopping:
            await asyncio.sleep(self.settings.webhook_sync_seconds)
            try:
                await self.manager.registry.sync(self.store)
            except StoreError as error:
                log.warning("syncing campaigns' inline webhooks failed: %s", error)
            except Exception:
                log.exception("syncing campaigns' inline webhooks crashed")

    async def tick(self) -> None:
        """One pass: settle calls in progress, then drive every running campaign. Leadership is
        confirmed again before the claims and dials (settling can take a while); a dial whose
        claim was taken back meanwhile is refused by the store all the same (`ClaimLost`)."""
        cache: dict[str, Campaign | None] = {}
        await self._settle(cache)
        if self._stopping or not await self.store.hold_leadership(LEADERSHIP):
            return
        for campaign in await self.store.active_campaigns():
            await self._drive(campaign)

    # -- settling -------------------------------------------------------------------------
    async def _campaign(self, cache: dict[str, Campaign | None], campaign_id: str) -> Campaign | None:
        if campaign_id not in cache:
            cache[campaign_id] = await self.store.get_campaign(campaign_id)
        return cache[campaign_id]

    async def _settle(self, cache: dict[str, Campaign | None]) -> None:
        now = self.now()
        for contact, record in await self.store.campaign_calls_in_flight():
            run_id = contact.workflow_run_id or ""
            if run_id in self._claimed or self.dialer.dialing(run_id):
                continue
            campaign = await self._campaign(cache, contact.campaign_id)
            if campaign is None:
                continue
            if record is None:
                if await self.store.release_campaign_claim(contact, now=now):
                    log.info(
                        "campaign %s contact %d: claim %s was never dialed; released",
                        campaign.id,
                        contact.position,
                        run_id,
                    )
            elif record.state.terminal:
                await self._finish(campaign, contact, record, now)
            elif not record.provider_call_id:
                await self._maybe_interrupted(campaign, contact, record, now)
            else:
                await self._watch(campaign, record, now)

    async def _finish(self, campaign: Campaign, contact: CampaignContact, record: CallRecord, now: datetime) -> None:
        options = CampaignOptions.model_validate(campaign.options)
        outcome = classify(record)
        status, delay = after_call(outcome, contact.attempts, options.retry)
        if status == "retry" and (campaign.final or campaign.quota):
            status = "failed"  # a campaign that ended or reached a quota places no more calls
        next_at = now + timedelta(seconds=delay) if delay is not None else None
        lines = payloads.transcript_lines(await self.store.get_timeline(record.workflow_run_id))
        body = payloads.call_completed(campaign, contact, record, outcome, lines)
        event = CampaignEvent(
            Event(type=ev.BATCH_CALL_COMPLETED, workflow_run_id=record.workflow_run_id, occurred_at=now, data=body),
            inline.targets(campaign, ev.BATCH_CALL_COMPLETED),
        )
        if await self.store.finish_campaign_attempt(
            contact, status=status, outcome=outcome, next_attempt_at=next_at, now=now, events=[event]
        ):
            log.info(
                "campaign %s contact %d call %d: %s -> %s",
                campaign.id,
                contact.position,
                contact.attempts,
                outcome,
                status,
            )
            self._checked.pop(record.workflow_run_id, None)
            self._hung_up.discard(record.workflow_run_id)

    async def _maybe_interrupted(
        self, campaign: Campaign, contact: CampaignContact, record: CallRecord, now: datetime
    ) -> None:
        created = record.created_at or now
        if (now - created).total_seconds() < self.settings.orphan_seconds:
            return
        reason = "the gateway stopped while dialing and the provider never reported the call; not redialed"
        log.warning("campaign %s contact %d: run %s %s", campaign.id, contact.position, record.workflow_run_id, reason)
        await self.store.record_activity(
            record.workflow_run_id,
            source="gateway",
            kind="dial.interrupted",
            data={"reason": reason},
            annotations={"dial_interrupted": True},
        )
        await self.store.apply_update(
            CallUpdate(
                provider=record.provider or campaign.provider,
                kind="dial",
                state=CallState.FAILED,
                raw_status="dial-interrupted",
                params={"reason": reason},
            ),
            run_id=record.workflow_run_id,
        )

    async def _watch(self, campaign: Campaign, record: CallRecord, now: datetime) -> None:
        run_id = record.workflow_run_id
        retry_on = (campaign.options.get("retry") or {}).get("on") or []
        if record.voicemail and "voicemail" in retry_on and run_id not in self._hung_up:
            self._hung_up.add(run_id)  # it will be called again: no message left now
            self.dialer.hang_up_soon(run_id, reason="voicemail; the campaign calls again later", source="campaign")
        quiet = (now - (record.updated_at or now)).total_seconds()
        last = self._checked.get(run_id, 0.0)
        if quiet < self.settings.reconcile_seconds or self.monotonic() - last < self.settings.reconcile_seconds:
            return
        self._checked[run_id] = self.monotonic()
        try:
            call, state = await self.dialer.provider_state(record)
        except ProviderRefused as refusal:
            log.warning("could not ask %s about run %s: %s", refusal.provider, run_id, refusal.reason)
            return
        if call is not None and state is not None and state != record.state:
            log.info(
                "run %s: %s reports %s while the gateway had %s",
                run_id,
                record.provider,
                call.status,
                record.state.value,
            )
            # The provider's end time and duration, not the time it was asked: a call that ended
            # long before it was reconciled did not talk all that while.
            await self.store.apply_update(
                CallUpdate(
                    provider=record.provider or campaign.provider,
                    kind="reconcile",
                    provider_call_id=record.provider_call_id,
                    raw_status=call.status,
                    state=state,
                    occurred_at=call.ended_at if state.terminal else None,
                    duration=call.duration if state.terminal else None,
                    params={
                        "status": call.status,
                        "source": "provider REST API",
                        "end_time": isoformat(call.ended_at),
                        "duration": call.duration,
                    },
                ),
                run_id=run_id,
            )

    # -- driving --------------------------------------------------------------------------
    async def _drive(self, campaign: Campaign) -> None:
        if campaign.status != "running":
            return
        options = CampaignOptions.model_validate(campaign.options)
        waiting = campaign.count("pending", "retry")
        in_progress = campaign.count("dialing")
        if waiting == 0 and in_progress == 0:
            await self.manager.complete(campaign.id)
            self._forget(campaign.id)
            return
        quota = quota_reached(campaign, options)
        if quota and waiting:
            used, limit = (
                (campaign.dialed, options.max_calls)
                if quota == "max_calls"
                else (campaign.minutes_used, options.max_minutes)
            )
            await self.manager.quota_reached(campaign, quota, used, limit or 0)
            return
        if self._stopping or self.draining() or not window_open(self.now(), options.window):
            return
        room = options.concurrency - in_progress
        if room <= 0 or not waiting:
            return
        pacer = self._pacers.get(campaign.id)
        if pacer is None or abs(pacer.interval - 1.0 / options.calls_per_second) > 1e-9:
            pacer = self._pacers[campaign.id] = Pacer(options.calls_per_second)
        slots = pacer.slots(self.monotonic(), self.settings.poll_seconds, min(room, waiting))
        if not slots:
            return
        claimed = await self.store.claim_campaign_contacts(
            campaign.id, [str(uuid.uuid4()) for _ in slots], now=self.now()
        )
        pacer.use(slots[: len(claimed)])
        for contact, slot in zip(claimed, slots, strict=False):  # claimed may be fewer than the slots
            self._claimed.add(contact.workflow_run_id or "")
            task = asyncio.ensure_future(self._dial(campaign, options, contact, slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _forget(self, campaign_id: str) -> None:
        self._pacers.pop(campaign_id, None)
        self._refusals.pop(campaign_id, None)

    async def _dial(self, campaign: Campaign, options: CampaignOptions, contact: CampaignContact, slot: float) -> None:
        run_id = contact.workflow_run_id or ""
        try:
            wait = slot - self.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            request = CallRequest(
                provider=campaign.provider,
                to=contact.phone,
                from_=campaign.from_number,
                workflow_id=campaign.workflow_id,
                user_id=campaign.user_id,
                initial_context={
                    **contact.context,
                    "campaign": {
                        "id": campaign.id,
                        "name": campaign.name,
                        "contact_position": contact.position,
                        "contact_name": contact.name,
                        "attempt": contact.attempts,
                    },
                },
                machine_detection=options.machine_detection or None,
                ring_timeout=options.ring_timeout,
                run_id=run_id,
                claim=(campaign.id, contact.position),
            )
            await self.dialer.place_call(request, origin=self.origin() or campaign.origin)
            self._refusals[campaign.id] = 0
        except ClaimLost as lost:  # another instance took the contact back: it dials it, not this one
            log.warning("%s", lost)
        except DialError as error:
            await self._refused(campaign, contact, error)
        except Exception:
            log.exception("campaign %s contact %d: dialing crashed", campaign.id, contact.position)
        finally:
            self._claimed.discard(run_id)
            self.wake()

    async def _refused(self, campaign: Campaign, contact: CampaignContact, error: DialError) -> None:
        refusal = error.refusal
        if error.record is None:  # nothing was written or dialed: give the contact back, then stop
            await self.store.release_campaign_claim(contact, now=self.now())
            await self.manager.fail(
                campaign.id, error.detail, "PROVIDER_NOT_CONFIGURED" if error.status == 400 else "DIAL_ERROR"
            )
            return
        if refusal is not None and refusal.auth_failed:
            await self.manager.fail(
                campaign.id,
                f"{refusal.provider} refused the gateway's credentials: {refusal.reason}",
                "PROVIDER_AUTH_FAILED",
            )
            return
        count = self._refusals.get(campaign.id, 0) + 1
        self._refusals[campaign.id] = count
        if count >= self.settings.max_consecutive_refusals:
            await self.manager.fail(
                campaign.id, f"{count} calls in a row were refused; last: {error.detail}", "PROVIDER_REFUSED"
            )
