"""The delivery worker: claims due outbox rows, sends one attempt each, records the outcome.

At-least-once: a row is leased for longer than an attempt can take; a lease that expires
(the process died mid-attempt) makes the row due again, with the same `webhook-id`. Per call
and subscription, the store hands out an ordered subscription's rows one at a time, in event
order. Each subscription has its own concurrency limit, and a subscription that keeps failing
is disabled (its rows wait, nothing is dropped) until an operator enables it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from gateway.calls.record import CallRecord
from gateway.events.envelope import Event
from gateway.logs import RUN_ID
from gateway.metrics import ATTEMPT_LATENCY, DELIVERIES
from gateway.store.base import AttemptRecord, Delivery, DeliveryResult, Store, StoreError
from gateway.tasks import finish_tasks
from gateway.webhooks.clients import EndpointClients
from gateway.webhooks.policy import Outcome, map_response, next_delay
from gateway.webhooks.sender import AttemptResult, RequestBuildError, build_request, send_attempt
from gateway.webhooks.subscription import Subscription

if TYPE_CHECKING:
    from gateway.config import DeliveryConfig

log = logging.getLogger("gateway.webhooks")


@dataclass(frozen=True)
class WorkerSettings:
    """How hard the worker pushes and when it gives up on an endpoint."""

    concurrency: int = 8
    lease_seconds: float = 0.0  # 0: the longest subscription timeout + 30 s
    poll_seconds: float = 1.0
    disable_after_failures: int = 50
    disable_after_seconds: float = 3600.0
    claim_limit: int = 200
    health_refresh_seconds: float = 30.0  # re-read endpoint health: another instance may have enabled or disabled one
    prefetch: int = 4  # rows claimed per subscription: up to prefetch x concurrency (see DeliveryWorker)

    @classmethod
    def from_config(cls, delivery: "DeliveryConfig") -> "WorkerSettings":
        """From the config's `delivery:` section."""
        return cls(concurrency=delivery.concurrency, prefetch=delivery.prefetch, lease_seconds=delivery.lease_seconds,
                   poll_seconds=delivery.poll_seconds, disable_after_failures=delivery.disable_after_failures,
                   disable_after_seconds=delivery.disable_after_seconds)


def delivery_context(event: Event, call: CallRecord | None, secrets_available: bool = True) -> dict[str, Any]:
    """The template context of DESIGN.md for one event (secrets are added by the renderer)."""
    record = call.to_dict() if call is not None else {}
    media = record.get("media") or {}
    return {
        "workflow_run_id": event.workflow_run_id,
        "workflow_run_name": None,
        "workflow_id": record.get("workflow_id"),
        "workflow_name": None,
        "user_id": record.get("user_id"),
        "event": event.envelope(),
        "call": record,
        "initial_context": record.get("initial_context", {}),
        "gathered_context": record.get("gathered_context", {}),
        "cost_info": record.get("cost_info", {}),
        "annotations": record.get("annotations", {}),
        "recording_url": media.get("recording_url"),
        "transcript_url": media.get("transcript_url"),
    }


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _has_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, dict):
        return any(_has_placeholder(k) or _has_placeholder(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_placeholder(v) for v in value)
    return False


def uses_template_context(subscription: Subscription) -> bool:
    """Whether any of the subscription's templates can read the call (conservatively: has a
    placeholder at all). Without one, rendering never looks at the context, so the worker
    need not load the call record for each attempt."""
    parts = (subscription.url, subscription.headers, subscription.payload_template,
             subscription.auth.model_dump(), subscription.signing.model_dump())
    return any(_has_placeholder(part) for part in parts)


class DeliveryWorker:
    """One per process; `start()` in the app's lifespan, `stop()` on shutdown.

    A subscription has at most `concurrency` attempts on the wire. The worker claims up to
    `prefetch` times that many rows, so that the next rows are at hand when a slot frees
    instead of one store round trip (a commit) away; under load that round trip, not the
    endpoint, would cap throughput. A claimed row waits for a slot only while its lease can
    still cover a whole attempt; one that cannot is not sent, and its lease is released so it
    is due again at once (nothing is sent twice). Prefetch needs that slack: with a lease shorter than
    the timeout + 10 s, the worker claims only what it can send at once.
    """

    def __init__(
        self,
        store: Store,
        subscriptions: Sequence[Subscription],
        secrets: Mapping[str, str],
        *,
        settings: WorkerSettings | None = None,
        clients: EndpointClients | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.subscriptions: dict[str, Subscription] = {}
        self._needs_call: dict[str, bool] = {}
        self.secrets = dict(secrets)
        self.settings = settings or WorkerSettings()
        self.clients = clients or EndpointClients()
        self.clock = clock
        self.rand = rand
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.lease_seconds = self.settings.lease_seconds or (max((s.timeout for s in subscriptions), default=30) + 30)
        self.disabled: set[str] = set()
        self.inflight: dict[str, int] = {}  # claimed, not yet answered
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.stale_skipped = 0
        for subscription in subscriptions:
            self.add_subscription(subscription)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[Any] | None = None
        self._stopping = False
        self.delivered = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh_health()
        self._loop_task = asyncio.ensure_future(self._run())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming, let in-flight attempts finish within `grace`, release the rest."""
        self._stopping = True
        self._wake.set()
        await finish_tasks(self._loop_task, self._tasks, grace)
        try:
            released = await self.store.release_leases(self.owner)
            if released:
                log.info("released %d delivery leases", released)
        except StoreError as exc:
            log.warning("could not release delivery leases: %s", exc)
        await self.clients.aclose()

    def add_subscription(self, subscription: Subscription) -> None:
        """Deliver to `subscription` from now on (a campaign's inline webhooks come and go)."""
        name = subscription.name
        self.subscriptions[name] = subscription
        self._needs_call[name] = uses_template_context(subscription)
        self.inflight.setdefault(name, 0)
        self._slots.setdefault(name, asyncio.Semaphore(self.settings.concurrency))

    def remove_subscription(self, name: str) -> None:
        """Stop claiming for `name`; rows already claimed finish (as no longer configured)."""
        self.subscriptions.pop(name, None)

    def wake(self) -> None:
        """New deliveries were queued (called on the loop by the store)."""
        self._wake.set()

    async def refresh_health(self) -> None:
        health = await self.store.endpoint_health()
        self.disabled = {name for name, h in health.items() if h.disabled_at is not None}

    # -- the loop -------------------------------------------------------------------------
    def _can_wait(self, subscription: Subscription) -> float:
        """How long a claimed row may wait for a slot and still finish its attempt within the lease."""
        slack = self.lease_seconds - subscription.timeout - 5.0
        return slack if slack >= 5.0 else 0.0

    def _capacity(self) -> dict[str, int]:
        return {
            name: self.settings.concurrency * (self.settings.prefetch if self._can_wait(sub) else 1) - self.inflight.get(name, 0)
            for name, sub in self.subscriptions.items()
            if sub.enabled and name not in self.disabled
        }

    async def _run(self) -> None:
        health_read = self.clock()
        while not self._stopping:
            self._wake.clear()
            if self.clock() - health_read >= self.settings.health_refresh_seconds:
                health_read = self.clock()
                try:
                    await self.refresh_health()
                except StoreError as exc:
                    log.warning("re-reading endpoint health failed: %s", exc)
            try:
                claimed = await self.store.claim_deliveries(
                    self.owner, now=_utc(self.clock()), lease_seconds=self.lease_seconds,
                    capacity=self._capacity(), limit=self.settings.claim_limit,
                )
            except StoreError as exc:
                log.error("claiming deliveries failed: %s", exc)
                claimed = []
            claimed_at = self.clock()
            for delivery in claimed:
                self.inflight[delivery.subscription] = self.inflight.get(delivery.subscription, 0) + 1
                task = asyncio.ensure_future(self._deliver(delivery, claimed_at))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(claimed) >= self.settings.claim_limit:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)
            except asyncio.TimeoutError:
                pass

    def _release(self, subscription: str) -> None:
        self.inflight[subscription] = max(0, self.inflight.get(subscription, 1) - 1)
        self._wake.set()

    async def _deliver(self, delivery: Delivery, claimed_at: float) -> None:
        RUN_ID.set(delivery.workflow_run_id)  # this task's log lines name the call
        released = False
        stale = False
        try:
            try:
                subscription = self.subscriptions.get(delivery.subscription)
                if subscription is None:  # no longer configured: recorded as failed without sending
                    result = await self._attempt(delivery)
                else:
                    async with self._slots[delivery.subscription]:
                        can_wait = self._can_wait(subscription)
                        stale = bool(can_wait) and self.clock() - claimed_at > can_wait
                        if not stale:
                            result = await self._attempt(delivery)
                if not stale:
                    DELIVERIES.labels(delivery.subscription, result.status).inc()
                    if result.attempt.latency_ms is not None:
                        ATTEMPT_LATENCY.labels(delivery.subscription).observe(result.attempt.latency_ms / 1000)
            finally:
                # The endpoint's slot is free once its answer is in: recording the attempt is
                # our bookkeeping, and the row stays leased (so unclaimable, and for an ordered
                # subscription still pending, holding back the call's next event) until then.
                self._release(delivery.subscription)
                released = True
            if stale:
                # Not sent: a send begun now could outlive the lease. The row goes back, due again
                # at once (in its place in the call's order), rather than when the lease ends.
                self.stale_skipped += 1
                log.debug("delivery %s waited past its lease slack; released unsent", delivery.id)
                await self.store.release_leases(self.owner, [delivery.id])
                return
            health = await self.store.finish_delivery(delivery, self.owner, result)
            if result.status == "succeeded":
                self.delivered += 1
            if result.endpoint_ok is False:
                await self._maybe_disable(delivery.subscription, health.consecutive_failures, health.first_failure_at,
                                          gone=result.attempt.outcome == Outcome.DISABLE.value)
        except StoreError as exc:
            log.error("recording delivery %s failed: %s (the lease will expire and it is retried)", delivery.id, exc)
        except Exception:  # a bug must not kill the worker; the lease expiry retries the row
            log.exception("delivery %s crashed", delivery.id)
        finally:
            if released:
                self._wake.set()  # a recorded attempt may let the call's next event go
            else:
                self._release(delivery.subscription)

    async def _attempt(self, delivery: Delivery) -> DeliveryResult:
        now = self.clock()
        subscription = self.subscriptions.get(delivery.subscription)
        if subscription is None:
            return DeliveryResult("failed", AttemptRecord(_utc(now), "fail", error="subscription is no longer configured"))
        call = None
        if delivery.workflow_run_id and self._needs_call.get(subscription.name, True):
            call = await self.store.get_call(delivery.workflow_run_id)
        assert delivery.event is not None
        try:
            prepared = build_request(subscription, delivery.event.envelope(), delivery_context(delivery.event, call),
                                     self.secrets, message_id=delivery.id, now=now)
        except RequestBuildError as exc:
            log.warning("delivery %s to %s cannot be built: %s", delivery.id, subscription.name, exc)
            return DeliveryResult("failed", AttemptRecord(_utc(now), "fail", error=f"request could not be built: {exc}"),
                                  endpoint_ok=None)
        sent = await send_attempt(self.clients, prepared, subscription)
        return self._decide(delivery, subscription, sent, now)

    def _decide(self, delivery: Delivery, subscription: Subscription, sent: AttemptResult, now: float) -> DeliveryResult:
        attempt = AttemptRecord(
            attempted_at=_utc(now), outcome=sent.outcome.value, status=sent.status, latency_ms=sent.latency_ms,
            error=sent.error, response=sent.response_text or None, request=sent.request,
        )
        status, next_at = "failed", None
        if sent.outcome is Outcome.SUCCESS:
            status = "succeeded"
        elif sent.outcome is Outcome.RETRY:
            first = delivery.first_attempt_at.timestamp() if delivery.first_attempt_at else now
            delay = next_delay(subscription.retry, delivery.attempts + 1, first_attempt_at=first, now=now,
                               status=sent.status, retry_after=sent.retry_after, random=self.rand)
            if delay is None:
                status = "dead"
            else:
                status, next_at = "pending", _utc(now + delay)
        mapped = None
        if status != "pending" and (subscription.response_mapping or subscription.store_raw_response):
            mapped = map_response(subscription.name, sent.status, sent.response_json, subscription.response_mapping,
                                  success=sent.success, raw_text=sent.response_text if subscription.store_raw_response else None)
        # A success is one line per event at DEBUG (at thousands a second, INFO lines would
        # cost more than the delivery); a retry stays at INFO, a failure at WARNING.
        level = logging.DEBUG if status == "succeeded" else logging.INFO if status == "pending" else logging.WARNING
        if log.isEnabledFor(level):
            log.log(level, "delivery %s %s -> %s: %s (%s %s, %.0f ms)%s", delivery.id, delivery.event.type if delivery.event else "?",
                    subscription.name, status, sent.status or sent.error, sent.outcome.value, sent.latency_ms,
                    f", next in {(next_at - _utc(now)).total_seconds():.1f} s" if next_at else "")
        return DeliveryResult(status=status, attempt=attempt, next_attempt_at=next_at, gathered_context=mapped,
                              endpoint_ok=sent.outcome is Outcome.SUCCESS)

    async def _maybe_disable(self, name: str, failures: int, first_failure_at: datetime | None, *, gone: bool) -> None:
        if name in self.disabled:
            return
        if gone:
            reason = "the endpoint answered 410 Gone"
        else:
            span = (_utc(self.clock()) - first_failure_at) if first_failure_at else timedelta(0)
            if failures < self.settings.disable_after_failures or span.total_seconds() < self.settings.disable_after_seconds:
                return
            reason = f"{failures} consecutive failed attempts over {span.total_seconds():.0f} s"
        self.disabled.add(name)
        await self.store.set_endpoint_disabled(name, reason=reason, now=_utc(self.clock()))
        log.error("webhook subscription %s disabled: %s (its deliveries wait until it is enabled again)", name, reason)
