"""A campaign's inline webhook URLs (`options.webhooks`) as ad-hoc subscriptions.

Design: each URL becomes a `Subscription` named after the campaign and the hook
(`cmp_…-batch-complete`, `cmp_…-call-complete`, `cmp_…-batch-failed`) that receives one event
type (`batch.completed`, `batch.call_completed`, `batch.failed`) and sends the event's data as
the body (`payload_template: "{{event.data}}"`, so the Dialgen shapes go out as they are). The
URLs live in the campaign row (its `options`), so nothing else is persisted: the store writes
the delivery rows for them in the same transaction as the campaign change that causes the
event, and every process registers the subscriptions with its one `DeliveryWorker`, which
delivers them like any other (durable, leased, retried). They are signed both ways Dialgen's
receivers may check: Standard Webhooks headers, and `x-dialgen-signature` (hex HMAC-SHA256 of
the body keyed with the secret as the user holds it), over a body written exactly as
`JSON.stringify(req.body)` gives it back (signing scheme `dialgen`). A campaign's
subscriptions are registered at once by the process that creates it and, by every process, on
each `InlineRegistry.sync` (a few seconds apart): so any instance delivers them, whichever
made the campaign and whether or not it still runs. A campaign's subscriptions are kept while
it can still cause events (active, or a call still up) or has deliveries pending, and released
(with their slots and connections) once it has neither.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from typing import Protocol

from gateway.calls import events as ev
from gateway.calls.events import BATCH_CALL_COMPLETED
from gateway.store.base import Store
from gateway.store.campaigns import Campaign
from gateway.webhooks.subscription import DialgenSigning, RetryPolicy, Subscription

log = logging.getLogger("gateway.dial")

HOOKS: dict[str, tuple[str, str]] = {
    "onBatchComplete": ("batch-complete", ev.BATCH_COMPLETED),
    "onCallComplete": ("call-complete", BATCH_CALL_COMPLETED),
    "onBatchFailed": ("batch-failed", ev.BATCH_FAILED),
}


def new_signing_secret() -> str:
    """A fresh Standard Webhooks secret (`whsec_` + 32 random bytes, base64)."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode("ascii")


def subscription_name(campaign_id: str, hook: str) -> str:
    return f"{campaign_id}-{HOOKS[hook][0]}"


def campaign_of(subscription: str) -> str | None:
    """The campaign id of an inline subscription's name, or None for any other subscription."""
    for suffix, _ in HOOKS.values():
        if subscription.startswith("cmp_") and subscription.endswith("-" + suffix):
            return subscription[: -len(suffix) - 1]
    return None


def targets(campaign: Campaign, event_type: str) -> list[str]:
    """The campaign's inline subscriptions that receive `event_type`."""
    urls = campaign.options.get("webhooks") or {}
    return [
        subscription_name(campaign.id, hook)
        for hook, (_, kind) in HOOKS.items()
        if kind == event_type and urls.get(hook)
    ]


@dataclass(frozen=True)
class InlineSettings:
    """How inline webhooks are sent: the signing secret when configured (else each campaign
    has its own), timeout, retries and the networks allowed past the SSRF guard."""

    secret: str | None = None
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allow_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)


def subscriptions(campaign: Campaign, settings: InlineSettings) -> list[Subscription]:
    """The ad-hoc subscriptions of a campaign's inline URLs."""
    urls = campaign.options.get("webhooks") or {}
    secret = settings.secret or campaign.webhook_secret
    out = []
    for hook, (_suffix, kind) in HOOKS.items():
        url = urls.get(hook)
        if not url:
            continue
        out.append(
            Subscription(
                name=subscription_name(campaign.id, hook),
                events=[kind],
                url=url,
                method="POST",
                payload_template="{{event.data}}",
                signing=DialgenSigning(secrets=[secret] if secret else []),
                timeout=settings.timeout,
                retry=settings.retry,
                ordered=False,
                allow_networks=list(settings.allow_networks),
            )
        )
    return out


class SubscriptionHost(Protocol):
    inflight: dict[str, int]

    def add_subscription(self, subscription: Subscription) -> None: ...

    def remove_subscription(self, name: str) -> None: ...

    def wake(self) -> None: ...


class InlineRegistry:
    """Keeps the worker's table of subscriptions in step with the campaigns' inline URLs."""

    def __init__(self, worker: SubscriptionHost | None, settings: InlineSettings) -> None:
        self.worker = worker
        self.settings = settings
        self.registered: set[str] = set()
        self._fresh: set[str] = set()  # registered since the running sync began: it does not drop them

    def register(self, campaign: Campaign) -> list[str]:
        if self.worker is None:
            return []
        names = []
        for subscription in subscriptions(campaign, self.settings):
            self.worker.add_subscription(subscription)
            names.append(subscription.name)
        self.registered.update(names)
        self._fresh.update(names)
        if names:
            self.worker.wake()
        return names

    async def sync(self, store: Store) -> None:
        """Register the inline webhooks of every campaign that can still cause events or has
        deliveries pending (on whichever instance it was made), and release the others."""
        if self.worker is None:
            return
        self._fresh = set()
        # Campaigns first, pending rows after: a row written meanwhile by a campaign seen as over
        # (its last call finished) is then seen pending, so its subscription is kept.
        campaigns = {c.id: c for c in await store.campaigns_for_webhooks()}
        pending = await store.pending_subscriptions()
        more = sorted({campaign_id for campaign_id in map(campaign_of, pending) if campaign_id} - campaigns.keys())
        if more:
            campaigns.update((c.id, c) for c in await store.campaigns_for_webhooks(more))
        wanted = {s.name: s for c in campaigns.values() for s in subscriptions(c, self.settings)}
        for name in self.registered - wanted.keys() - pending - self._fresh:
            if self.worker.inflight.get(name):
                continue  # an attempt is under way: let it finish first
            self.worker.remove_subscription(name)
            self.registered.discard(name)
        new = [s for name, s in wanted.items() if name not in self.registered]
        for subscription in new:
            self.worker.add_subscription(subscription)
            self.registered.add(subscription.name)
        if new:
            log.info("delivering the inline webhooks of %d more campaign subscription(s)", len(new))
            self.worker.wake()
