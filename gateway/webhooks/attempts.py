"""One delivery attempt, start to verdict: render and send the request for a delivery, then
decide what becomes of the row (succeeded, retried when, failed, dead) and what the response
maps into the call.

`AttemptMaker` holds what an attempt needs (the subscriptions, secret values, connection pools,
the store for the call a template reads) and nothing about scheduling: the delivery worker
uses one in its own process, and each sender process (`gateway.webhooks.processes`) has its
own for the attempts the worker hands it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.calls.disposition import call_disposition
from gateway.calls.record import CallRecord, channel_link
from gateway.errors import GatewayError
from gateway.events.envelope import Event
from gateway.metrics import UNBUILDABLE, labelled
from gateway.store.base import AttemptRecord, Delivery, DeliveryResult, Store
from gateway.webhooks.clients import EndpointClients
from gateway.webhooks.policy import Outcome, map_response, next_delay
from gateway.webhooks.sender import AttemptResult, RequestBuildError, build_request, send_attempt
from gateway.webhooks.subscription import Subscription

log = logging.getLogger("gateway.webhooks")


def delivery_context(event: Event, call: CallRecord | None, secrets_available: bool = True) -> dict[str, Any]:
    """The template context of DESIGN.md for one event (secrets are added by the renderer),
    with Dograh's variables in Dograh's meaning: `campaign_id` (the campaign that placed the
    call, else None), `call_time` (when the call record was made), `cost_info.call_duration_seconds`,
    `gathered_context.call_disposition` (`calls.disposition`), and `user_recording_url` /
    `bot_recording_url` (the caller's and the agent's channel of the recording)."""
    record = call.to_dict() if call is not None else {}
    media = record.get("media") or {}
    gathered = dict(record.get("gathered_context") or {})
    cost_info = dict(record.get("cost_info") or {})
    if call is not None:
        if (disposition := call_disposition(call)) is not None:
            gathered.setdefault("call_disposition", disposition)
        if call.duration is not None:
            cost_info.setdefault("call_duration_seconds", call.duration)
    campaign = (record.get("initial_context") or {}).get("campaign")
    recording_url = media.get("recording_url")
    return {
        "workflow_run_id": event.workflow_run_id,
        "workflow_run_name": None,
        "workflow_id": record.get("workflow_id"),
        "workflow_name": None,
        "user_id": record.get("user_id"),
        "campaign_id": campaign.get("id") if isinstance(campaign, dict) else None,
        "call_time": record.get("created_at"),
        "event": event.envelope(),
        "call": record,
        "initial_context": record.get("initial_context", {}),
        "gathered_context": gathered,
        "cost_info": cost_info,
        "annotations": record.get("annotations", {}),
        "recording_url": recording_url,
        "user_recording_url": channel_link(recording_url, "caller"),
        "bot_recording_url": channel_link(recording_url, "agent"),
        "transcript_url": media.get("transcript_url"),
    }


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
    return any(_has_placeholder(part) for part in subscription.templates())


class AttemptLost(GatewayError):
    """The process making an attempt ended before it answered: whether the request went out
    is unknown, so the delivery is due again (at least once)."""


class AttemptCrashed(GatewayError):
    """The attempt raised (a bug) or its result could not be handed back: recorded as a failed
    attempt and retried by the schedule (`AttemptMaker.crashed`), never made again at once."""


def utc(ts: float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


class AttemptMaker:
    """Makes attempts for the subscriptions it knows (`add`, `remove`)."""

    def __init__(
        self,
        store: Store | None,
        secrets: Mapping[str, str],
        *,
        clients: EndpointClients | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.secrets = dict(secrets)
        self.clients = clients or EndpointClients()
        self.clock = clock
        self.rand = rand
        self.subscriptions: dict[str, Subscription] = {}
        self._needs_call: dict[str, bool] = {}

    def add(self, subscription: Subscription) -> None:
        self.subscriptions[subscription.name] = subscription
        self._needs_call[subscription.name] = uses_template_context(subscription)

    def remove(self, name: str) -> None:
        """Forget `name`, and close its connections (an attempt on them now fails, and is retried)."""
        self.subscriptions.pop(name, None)
        self._needs_call.pop(name, None)
        self.clients.release(name)

    async def make(self, delivery: Delivery) -> DeliveryResult:
        """Send one attempt of `delivery` and decide the row's next step. Always a result: an
        attempt that raises (a bug) is a failed attempt, retried by the schedule."""
        now = self.clock()
        try:
            return await self._make(delivery, now)
        except Exception as exc:
            log.exception("delivery %s: the attempt crashed", delivery.id)
            return self.crashed(delivery, f"the attempt crashed ({type(exc).__name__}; see the log)", now)

    def crashed(self, delivery: Delivery, reason: str, now: float) -> DeliveryResult:
        """A failed attempt for one that raised, or whose result was lost on the way back (sent
        or not: at least once): recorded with `reason`, and due again by the retry schedule
        (dead after it), so that a bug can neither lose a delivery nor resend it in a loop. It
        says nothing about the endpoint (its health is untouched)."""
        attempt = AttemptRecord(attempted_at=utc(now), outcome=Outcome.RETRY.value, error=reason)
        subscription = self.subscriptions.get(delivery.subscription)
        if subscription is None:
            return DeliveryResult("failed", attempt)
        status, next_at = self._schedule(delivery, subscription, now, status=None, retry_after=None)
        return DeliveryResult(status, attempt, next_attempt_at=next_at)

    def _schedule(
        self,
        delivery: Delivery,
        subscription: Subscription,
        now: float,
        *,
        status: int | None,
        retry_after: float | None,
    ) -> tuple[str, datetime | None]:
        """After a retryable attempt: ("pending", when) by the schedule, or ("dead", None)."""
        first = delivery.first_attempt_at.timestamp() if delivery.first_attempt_at else now
        delay = next_delay(
            subscription.retry,
            delivery.attempts + 1,
            first_attempt_at=first,
            now=now,
            status=status,
            retry_after=retry_after,
            random=self.rand,
        )
        return ("dead", None) if delay is None else ("pending", utc(now + delay))

    async def _make(self, delivery: Delivery, now: float) -> DeliveryResult:
        subscription = self.subscriptions.get(delivery.subscription)
        if subscription is None:
            return DeliveryResult(
                "failed", AttemptRecord(utc(now), "fail", error="subscription is no longer configured")
            )
        event = delivery.event
        assert event is not None
        if self._needs_call.get(subscription.name, True):  # its templates read the call or the event
            call = None
            if delivery.workflow_run_id and self.store is not None:
                call = await self.store.get_call(delivery.workflow_run_id)
            context = delivery_context(event, call)
            envelope = context["event"]
        else:  # nothing to render: the body is the envelope as stored
            envelope, context = None, {}
        try:
            prepared = build_request(
                subscription,
                envelope,
                context,
                self.secrets,
                message_id=delivery.id,
                now=now,
                envelope_body=event.envelope_json(),
            )
        except RequestBuildError as exc:
            log.warning("delivery %s to %s cannot be built: %s", delivery.id, subscription.name, exc)
            labelled(UNBUILDABLE, subscription.name).inc()
            return DeliveryResult(
                "failed", AttemptRecord(utc(now), "fail", error=f"request could not be built: {exc}"), endpoint_ok=None
            )
        sent = await send_attempt(self.clients, prepared, subscription)
        return self.decide(delivery, subscription, sent, now)

    def decide(self, delivery: Delivery, subscription: Subscription, sent: AttemptResult, now: float) -> DeliveryResult:
        """The row's next step after `sent`: the retry schedule, response mapping, the log line."""
        error = sent.error
        if sent.unparsed and (subscription.response_mapping or subscription.success.expression):
            error = (
                f"the answer was not parsed as JSON ({sent.unparsed}): the success expression and"
                f" response_mapping had nothing to look at"
            )
        attempt = AttemptRecord(
            attempted_at=utc(now),
            outcome=sent.outcome.value,
            status=sent.status,
            latency_ms=sent.latency_ms,
            error=error,
            response=sent.response_text or None,
            request=sent.request,
        )
        status, next_at = "failed", None
        if sent.outcome is Outcome.SUCCESS:
            status = "succeeded"
        elif sent.outcome is Outcome.RETRY:
            status, next_at = self._schedule(
                delivery, subscription, now, status=sent.status, retry_after=sent.retry_after
            )
        mapped = None
        if status != "pending" and (subscription.response_mapping or subscription.store_raw_response):
            mapped = map_response(
                subscription.name,
                sent.status,
                sent.response_json,
                subscription.response_mapping,
                success=sent.success,
                raw_text=sent.response_text if subscription.store_raw_response else None,
            )
        # A success is one line per event at DEBUG (at thousands a second, INFO lines would
        # cost more than the delivery); a retry stays at INFO, a failure at WARNING.
        level = logging.DEBUG if status == "succeeded" else logging.INFO if status == "pending" else logging.WARNING
        if log.isEnabledFor(level):
            log.log(
                level,
                "delivery %s %s -> %s: %s (%s %s, %.0f ms)%s",
                delivery.id,
                delivery.event.type if delivery.event else "?",
                subscription.name,
                status,
                sent.status or sent.error,
                sent.outcome.value,
                sent.latency_ms,
                f", next in {(next_at - utc(now)).total_seconds():.1f} s" if next_at else "",
            )
        return DeliveryResult(
            status=status,
            attempt=attempt,
            next_attempt_at=next_at,
            gathered_context=mapped,
            endpoint_ok=sent.outcome is Outcome.SUCCESS,
        )

    async def aclose(self) -> None:
        await self.clients.aclose()
