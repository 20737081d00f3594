"""The delivery worker: takes outbox rows, sends one attempt each, records the outcome.

Rows reach it two ways. New ones come straight from the transaction that wrote them (the
store's `DirectDispatch`: leased to this worker there and handed over after the commit), and
so does a call's next event when the one before it finished. The rest (retries falling due,
rows another process's lease left behind, replays, rows written while the worker was full or
had none of their subscription) it claims from the outbox, when told there are some and on a
poll. Finished attempts are recorded in batches: one store transaction for all those that
finished while the previous one was being written.

At-least-once: a row is leased for longer than an attempt can take (`gateway.webhooks.deadlines`:
an attempt that has not ended by its deadline is recorded as failed, without waiting longer);
a lease that expires (the process died mid-attempt) makes the row due again, with the same
`webhook-id`. A finish counts only under the lease its row was sent under: one that comes back
after losing it changes nothing (counted in `gateway_delivery_late_finishes_total`). An attempt
that raises (a bug) is recorded as a failed attempt and retried by the schedule. Per call
and subscription, an ordered subscription's rows go one at a time, in event order. Each
subscription has its own concurrency limit, and a subscription that keeps failing is disabled
(its rows wait, nothing is dropped) until an operator enables it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.logs import RUN_ID
from gateway.metrics import ATTEMPT_LATENCY, DELIVERIES, LATE_FINISHES, labelled
from gateway.store.base import Delivery, DeliveryResult, DirectDispatch, EndpointHealth, Store, StoreError
from gateway.tasks import finish_tasks
from gateway.webhooks.attempts import (
    AttemptCrashed,
    AttemptLost,
    AttemptMaker,
    delivery_context,
    uses_template_context,
    utc,
)
from gateway.webhooks.clients import EndpointClients
from gateway.webhooks.deadlines import attempt_deadline, default_lease
from gateway.webhooks.policy import Outcome
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
    prefetch: int = 4  # rows taken per subscription: up to prefetch x concurrency (see DeliveryWorker)

    @classmethod
    def from_config(cls, delivery: DeliveryConfig) -> WorkerSettings:
        """From the config's `delivery:` section."""
        return cls(
            concurrency=delivery.concurrency,
            prefetch=delivery.prefetch,
            lease_seconds=delivery.lease_seconds,
            poll_seconds=delivery.poll_seconds,
            disable_after_failures=delivery.disable_after_failures,
            disable_after_seconds=delivery.disable_after_seconds,
        )


__all__ = ["DeliveryWorker", "WorkerSettings", "delivery_context", "uses_template_context"]

RemoteAttempts = Callable[[Delivery], Awaitable[DeliveryResult]]
"""Makes an attempt in another process (the delivery processes): a `DeliveryResult`, or
`AttemptLost` when that process ended before it answered."""


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class DeliveryWorker:
    """One per process; `start()` in the app's lifespan, `stop()` on shutdown.

    A subscription has at most `concurrency` attempts on the wire. The worker takes up to
    `prefetch` times that many rows (leased to it as they are written, or claimed), so that the
    next rows are at hand when a slot frees instead of one store round trip (a commit) away;
    under load that round trip, not the endpoint, would cap throughput. A row waits for a slot
    only while its lease can still cover a whole attempt; one that cannot is not sent, and its
    lease is released so it is due again at once (nothing is sent twice). Prefetch needs that
    slack: with a lease shorter than the timeout + 10 s, the worker takes only what it can send
    at once.
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
        self.settings = settings or WorkerSettings()
        self.attempts = AttemptMaker(store, secrets, clients=clients, clock=clock, rand=rand)
        self.clients = self.attempts.clients
        self.clock = clock
        self.remote: RemoteAttempts | None = None  # attempts made in the delivery processes
        self.remote_subscriptions: frozenset[str] = frozenset()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.lease_seconds = self.settings.lease_seconds or default_lease(s.timeout for s in subscriptions)
        self.disabled: set[str] = set()
        self.inflight: dict[str, int] = {}  # taken (leased or claimed), not yet answered
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._room: dict[str, int] = {}  # rows at hand per subscription: in flight + waiting for a slot
        self.stale_skipped = 0
        self.late_finishes = 0  # attempts whose finish came back after the lease was lost
        for subscription in subscriptions:
            self.add_subscription(subscription)
        self._wake = asyncio.Event()
        self._backlog = True  # rows may wait in the outbox for a claim (unknown at start)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[Any] | None = None
        self._finished: list[tuple[Delivery, DeliveryResult, asyncio.Future[EndpointHealth | None]]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._stopping = False
        self.delivered = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh_health()
        self._loop_task = asyncio.ensure_future(self._run())

    def direct_dispatch(self) -> DirectDispatch:
        """This worker as the store's direct dispatch (`Store.set_dispatch`)."""
        return DirectDispatch(
            owner=self.owner, lease_seconds=self.lease_seconds, room=self._room_for, deliver=self._dispatch
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming, let in-flight attempts finish within `grace`, release the rest."""
        self._stopping = True
        self._wake.set()
        await finish_tasks(self._loop_task, self._tasks, grace)
        if self._recorder is not None:  # the last batch of attempts being written
            await asyncio.gather(self._recorder, return_exceptions=True)
        try:
            released = await self.store.release_leases(self.owner)
            if released:
                log.info("released %d delivery leases", released)
        except StoreError as exc:
            log.warning("could not release delivery leases: %s", exc)
        await self.attempts.aclose()

    def add_subscription(self, subscription: Subscription) -> None:
        """Deliver to `subscription` from now on (a campaign's inline webhooks come and go)."""
        name = subscription.name
        self.subscriptions[name] = subscription
        self.attempts.add(subscription)
        self.inflight.setdefault(name, 0)
        self._slots.setdefault(name, asyncio.Semaphore(self.settings.concurrency))
        self._room[name] = self.settings.concurrency * (self.settings.prefetch if self._can_wait(subscription) else 1)

    def remove_subscription(self, name: str) -> None:
        """Stop claiming for `name` and let go of what it holds (its slots, counters and
        connections); rows already claimed finish (as no longer configured)."""
        self.subscriptions.pop(name, None)
        self.attempts.remove(name)
        self._room.pop(name, None)
        if not self.inflight.get(name):
            self.inflight.pop(name, None)
            self._slots.pop(name, None)

    def send_through(self, remote: RemoteAttempts, subscriptions: Sequence[str]) -> None:
        """Make the attempts of `subscriptions` through `remote` (the sender processes); the
        rest (a campaign's inline webhooks) in this process."""
        self.remote = remote
        self.remote_subscriptions = frozenset(subscriptions)

    def wake(self) -> None:
        """Rows wait in the outbox for a claim (new ones the direct dispatch did not take, a
        retry or replay asked for): claim now."""
        self._backlog = True
        self._wake.set()

    def _room_for(self, subscription: str) -> int:
        """How many more rows of `subscription` may be leased to this worker as they are written.
        Called by the store inside its transaction, possibly on another thread: reads only."""
        room = self._room.get(subscription)
        config = self.subscriptions.get(subscription)
        if room is None or config is None or not config.enabled or self._stopping or subscription in self.disabled:
            return 0
        return room - self.inflight.get(subscription, 0)

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        """Rows leased to this worker by the transaction that wrote them (on the loop, after it
        committed): each goes out as if claimed now."""
        if self._stopping:
            return  # `stop()` releases this worker's leases
        now = self.clock()
        for delivery in deliveries:
            self._start(delivery, now)

    def _start(self, delivery: Delivery, claimed_at: float) -> None:
        self.inflight[delivery.subscription] = self.inflight.get(delivery.subscription, 0) + 1
        task = asyncio.ensure_future(self._deliver(delivery, claimed_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def refresh_health(self) -> None:
        health = await self.store.endpoint_health()
        self.disabled = {name for name, h in health.items() if h.disabled_at is not None}

    # -- the loop -------------------------------------------------------------------------
    def _can_wait(self, subscription: Subscription) -> float:
        """How long a claimed row may wait for a slot and still finish its attempt within the lease."""
        slack = self.lease_seconds - subscription.timeout - 5.0
        return slack if slack >= 5.0 else 0.0

    def _capacity(self) -> dict[str, int]:
        """Rows a claim may take, for each subscription that is sending."""
        return {
            name: self._room_for(name)
            for name, sub in self.subscriptions.items()
            if sub.enabled and name not in self.disabled
        }

    async def _run(self) -> None:
        """Claim when rows wait in the outbox (`wake`, a slot freed while the last claim was
        full) and every `poll_seconds` (retries falling due, leases that expired elsewhere)."""
        health_read = claimed_at = self.clock()
        while not self._stopping:
            self._wake.clear()
            if self.clock() - health_read >= self.settings.health_refresh_seconds:
                health_read = self.clock()
                try:
                    await self.refresh_health()
                except StoreError as exc:
                    log.warning("re-reading endpoint health failed: %s", exc)
            if self._backlog or self.clock() - claimed_at >= self.settings.poll_seconds:
                self._backlog = False  # a wake while the claim runs sets it again
                capacity = self._capacity()
                try:
                    claimed = await self.store.claim_deliveries(
                        self.owner,
                        now=utc(self.clock()),
                        lease_seconds=self.lease_seconds,
                        capacity=capacity,
                        limit=self.settings.claim_limit,
                    )
                except StoreError as exc:
                    log.error("claiming deliveries failed: %s", exc)
                    claimed = []
                claimed_at = self.clock()
                taken: dict[str, int] = {}
                for delivery in claimed:
                    taken[delivery.subscription] = taken.get(delivery.subscription, 0) + 1
                    self._start(delivery, claimed_at)
                if len(claimed) >= self.settings.claim_limit or any(
                    taken.get(name, 0) >= room for name, room in capacity.items()
                ):
                    self._backlog = True  # a full claim, or no room to claim: more may wait (taken when a slot frees)
                if len(claimed) >= self.settings.claim_limit:
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    def _release(self, subscription: str) -> None:
        left = max(0, self.inflight.get(subscription, 1) - 1)
        if left or subscription in self.subscriptions:
            self.inflight[subscription] = left
        else:  # removed while this row was in flight: nothing of it is kept
            self.inflight.pop(subscription, None)
            self._slots.pop(subscription, None)
        if self._backlog:
            self._wake.set()

    async def _deliver(self, delivery: Delivery, claimed_at: float) -> None:
        RUN_ID.set(delivery.workflow_run_id)  # this task's log lines name the call
        released = False
        stale = False
        try:
            try:
                subscription = self.subscriptions.get(delivery.subscription)
                if subscription is None:  # no longer configured: recorded as failed without sending
                    result = await self.attempts.make(delivery)
                else:
                    async with self._slots[delivery.subscription]:
                        can_wait = self._can_wait(subscription)
                        stale = bool(can_wait) and self.clock() - claimed_at > can_wait
                        if not stale:
                            result = await self._attempt(delivery, subscription)
                if not stale:
                    labelled(DELIVERIES, delivery.subscription, result.status).inc()
                    if result.attempt.latency_ms is not None:
                        labelled(ATTEMPT_LATENCY, delivery.subscription).observe(result.attempt.latency_ms / 1000)
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
                self.wake()
                return
            health = await self._record(delivery, result)
            if health is None:  # its lease was lost meanwhile: someone else has the row
                self.late_finishes += 1
                labelled(LATE_FINISHES, delivery.subscription).inc()
                log.warning(
                    "delivery %s: attempt finished (%s) after its lease was lost; recorded as history, the"
                    " delivery unchanged",
                    delivery.id,
                    result.status,
                )
                return
            if result.status == "succeeded":
                self.delivered += 1
            if result.endpoint_ok is False:
                await self._maybe_disable(
                    delivery.subscription,
                    health.consecutive_failures,
                    health.first_failure_at,
                    gone=result.attempt.outcome == Outcome.DISABLE.value,
                )
        except AttemptLost as exc:
            # Sent or not, nobody knows: at least once, so it goes again, at once.
            log.warning("delivery %s: %s; it is due again", delivery.id, exc)
            try:
                await self.store.release_leases(self.owner, [delivery.id])
            except StoreError as error:
                log.error(
                    "releasing delivery %s failed: %s (the lease will expire and it is retried)", delivery.id, error
                )
            self.wake()
        except StoreError as exc:
            log.error("recording delivery %s failed: %s (the lease will expire and it is retried)", delivery.id, exc)
        except Exception:  # a bug after the attempt was recorded (or while recording): the lease expiry retries the row
            log.exception("delivery %s crashed", delivery.id)
        finally:
            if not released:
                self._release(delivery.subscription)

    async def _attempt(self, delivery: Delivery, subscription: Subscription) -> DeliveryResult:
        """One attempt, here or in a delivery process, within its deadline. Always a result,
        except `AttemptLost` (its process died: due again at once): an attempt that raises, or
        has no result by its deadline, is a failed attempt retried by the schedule."""
        started = self.clock()
        deadline = attempt_deadline(subscription.timeout)
        try:
            async with asyncio.timeout(deadline):
                if self.remote is not None and delivery.subscription in self.remote_subscriptions:
                    return await self.remote(delivery)
                return await self.attempts.make(delivery)
        except AttemptLost:
            raise
        except AttemptCrashed as exc:
            reason = str(exc)
        except TimeoutError:
            reason = f"no result within {deadline:g} s (the attempt's deadline)"
        except Exception as exc:
            log.exception("delivery %s: the attempt crashed", delivery.id)
            reason = f"the attempt crashed ({type(exc).__name__}; see the log)"
        log.warning("delivery %s: %s; recorded as a failed attempt", delivery.id, reason)
        return self.attempts.crashed(delivery, reason, started)

    def _record(self, delivery: Delivery, result: DeliveryResult) -> asyncio.Future[EndpointHealth | None]:
        """Queue the attempt for the next batch `finish_deliveries` writes; the future gives
        the endpoint's health once it is stored (None: the row's lease was lost meanwhile)."""
        future: asyncio.Future[EndpointHealth | None] = asyncio.get_running_loop().create_future()
        self._finished.append((delivery, result, future))
        if self._recorder is None:
            self._recorder = asyncio.ensure_future(self._write_finished())
        return future

    async def _write_finished(self) -> None:
        """Write queued attempts, a batch at a time, until none are left. A batch the store
        refuses is written again one by one, so that one bad row fails alone (a batch that was
        written after all, its answer lost, is not written twice: the store records each
        attempt once). Every caller is answered, whatever goes wrong."""
        try:
            while self._finished:
                batch, self._finished = self._finished, []
                try:
                    healths = await self.store.finish_deliveries(self.owner, [(d, r) for d, r, _ in batch])
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0][2], exc)
                        continue
                    for delivery, result, future in batch:
                        try:
                            _settle(future, await self.store.finish_delivery(delivery, self.owner, result))
                        except Exception as one:
                            _settle(future, one)
                    continue
                for (_, _, future), health in zip(batch, healths, strict=False):
                    _settle(future, health)
        finally:
            self._recorder = None

    async def _maybe_disable(self, name: str, failures: int, first_failure_at: datetime | None, *, gone: bool) -> None:
        if name in self.disabled:
            return
        if gone:
            reason = "the endpoint answered 410 Gone"
        else:
            span = (utc(self.clock()) - first_failure_at) if first_failure_at else timedelta(0)
            if (
                failures < self.settings.disable_after_failures
                or span.total_seconds() < self.settings.disable_after_seconds
            ):
                return
            reason = f"{failures} consecutive failed attempts over {span.total_seconds():.0f} s"
        self.disabled.add(name)
        await self.store.set_endpoint_disabled(name, reason=reason, now=utc(self.clock()))
        log.error("webhook subscription %s disabled: %s (its deliveries wait until it is enabled again)", name, reason)
