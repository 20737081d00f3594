"""The delivery worker in process, against a real SQLite outbox and a real loopback receiver:
the per-subscription concurrency limit holds while rows are claimed ahead (prefetch), and a
claimed row that waited past its lease slack is not sent but falls due again, once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support import Receiver, eventually

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.states import CallState
from gateway.events.fanout import EventFanout, Route
from gateway.store.sqlite import SQLiteStore
from gateway.webhooks.subscription import Subscription
from gateway.webhooks.worker import DeliveryWorker, WorkerSettings


def _subscription(receiver: Receiver, timeout: float = 5) -> Subscription:
    return Subscription.model_validate({
        "name": "crm", "events": ["call.*"], "url": receiver.url + "/hooks/{{workflow_run_id}}",
        "signing": {"scheme": "none"}, "timeout": timeout, "allow_networks": ["127.0.0.0/8"],
    })


async def _outbox(tmp_path: Path, worker_of) -> tuple[SQLiteStore, DeliveryWorker]:
    store = SQLiteStore(str(tmp_path / "gateway.db"))
    worker = worker_of(store)
    store.set_fanout(EventFanout([Route("crm", ("call.*",), True)]), worker.wake)
    await store.open()
    await worker.start()
    return store, worker


async def _ring(store: SQLiteStore, n: int) -> None:
    for i in range(n):
        update = CallUpdate(provider="twilio", provider_call_id=f"CA{i:032d}", raw_status="ringing", state=CallState.RINGING)
        await store.apply_update(update, run_id=f"run-{i}")


def _most_at_once(requests: list[dict], hold: float) -> int:
    starts = sorted(r["at"] for r in requests)
    return max(sum(1 for other in starts if start <= other < start + hold) for start in starts)


async def test_concurrency_limit_holds_while_rows_are_claimed_ahead(tmp_path: Path) -> None:
    hold = 0.25
    with Receiver(lambda n, path: (200, {}, b"{}", hold)) as receiver:
        store, worker = await _outbox(tmp_path, lambda store: DeliveryWorker(
            store, [_subscription(receiver)], {}, settings=WorkerSettings(concurrency=3, prefetch=4, poll_seconds=0.2)))
        try:
            await _ring(store, 18)
            claimed_ahead = 0
            deadline = time.monotonic() + 20
            while len(receiver.requests) < 18 and time.monotonic() < deadline:
                claimed_ahead = max(claimed_ahead, worker.inflight["crm"])
                await asyncio.sleep(0.01)
            await asyncio.sleep(hold + 0.2)
        finally:
            await worker.stop()
            await store.close()
    requests = receiver.requests
    assert sorted(r["path"] for r in requests) == sorted(f"/hooks/run-{i}" for i in range(18))  # each once
    assert _most_at_once(requests, hold) == 3  # never more than the limit on the wire, and the limit is used
    assert claimed_ahead > 3  # rows were at hand beyond the slots (prefetch)


async def test_a_row_that_waited_past_its_lease_slack_is_released_unsent_and_sent_again_at_once(tmp_path: Path) -> None:
    skew = [0.0]  # the worker's clock runs ahead of the real one by this much
    with Receiver(lambda n, path: (200, {}, b"{}", 0.5 if n == 0 else 0.0)) as receiver:
        store, worker = await _outbox(tmp_path, lambda store: DeliveryWorker(
            store, [_subscription(receiver, timeout=5)], {}, clock=lambda: time.time() + skew[0],
            settings=WorkerSettings(concurrency=1, prefetch=4, lease_seconds=60, poll_seconds=0.1)))
        try:
            await _ring(store, 3)
            deadline = time.monotonic() + 10
            while (not receiver.requests or worker.inflight["crm"] < 3) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the first row is on the wire, two more claimed and waiting for the slot
            assert worker.inflight["crm"] == 3
            skew[0] += 55  # they have now waited longer than 60 - 5 - 5 s (past the lease slack), leases still on
            # Skipped, handed back and claimed afresh: sent long before their old leases (60 s) end.
            deadline = time.monotonic() + 10
            while (len(receiver.requests) < 3 or worker.stale_skipped < 2) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            assert worker.stale_skipped == 2
        finally:
            await worker.stop()
            await store.close()
    assert sorted(r["path"] for r in receiver.requests) == ["/hooks/run-0", "/hooks/run-1", "/hooks/run-2"]


async def test_endpoint_health_changed_elsewhere_reaches_the_worker(tmp_path: Path) -> None:
    """A subscription re-enabled by another instance (here: straight in the shared store, not
    through this worker) flows again at the worker's next health read, without a restart."""
    from datetime import datetime, timezone

    with Receiver() as receiver:
        store = SQLiteStore(str(tmp_path / "gateway.db"))
        await store.open()
        await store.set_endpoint_disabled("crm", reason="disabled by an operator", now=datetime.now(timezone.utc))
        await store.close()
        store, worker = await _outbox(tmp_path, lambda store: DeliveryWorker(
            store, [_subscription(receiver)], {},
            settings=WorkerSettings(poll_seconds=0.05, health_refresh_seconds=0.3)))
        try:
            assert worker.disabled == {"crm"}
            await _ring(store, 1)
            await asyncio.sleep(0.5)
            assert receiver.requests == []  # disabled: the row waits
            other = SQLiteStore(str(tmp_path / "gateway.db"))  # another instance's enable
            await other.open()
            await other.set_endpoint_disabled("crm", reason=None, now=datetime.now(timezone.utc))
            await other.close()
            deadline = time.monotonic() + 10
            while not receiver.requests and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert [r["path"] for r in receiver.requests] == ["/hooks/run-0"]
            assert worker.disabled == set()
        finally:
            await worker.stop()
            await store.close()


class CountingStore(SQLiteStore):
    """A real SQLite store that counts the worker's claims and finish batches."""

    claims = 0
    finishes: list[int]

    async def claim_deliveries(self, *args, **kwargs):
        self.claims += 1
        return await super().claim_deliveries(*args, **kwargs)

    async def finish_deliveries(self, owner, items):
        self.finishes.append(len(items))
        return await super().finish_deliveries(owner, items)


async def _direct(tmp_path: Path, worker_of) -> tuple[CountingStore, DeliveryWorker]:
    store = CountingStore(str(tmp_path / "gateway.db"))
    store.finishes = []
    worker = worker_of(store)
    store.set_fanout(EventFanout([Route("crm", ("call.*",), True)]), worker.wake)
    store.set_dispatch(worker.direct_dispatch())
    await store.open()
    await worker.start()
    return store, worker


async def test_new_rows_go_out_without_a_claim_and_their_attempts_are_recorded_in_batches(tmp_path: Path) -> None:
    with Receiver(lambda n, path: (200, {}, b"{}", 0.05)) as receiver:
        store, worker = await _direct(tmp_path, lambda store: DeliveryWorker(
            store, [_subscription(receiver)], {}, settings=WorkerSettings(concurrency=8, poll_seconds=30)))
        try:
            await eventually(lambda: store.claims == 1)  # the claim at start (the outbox may hold rows from before)
            claims_at_start = store.claims
            await asyncio.gather(*(_ring_one(store, i) for i in range(30)))  # within its room (8 x 4)
            await eventually(lambda: len(receiver.requests) == 30 and worker.delivered == 30)
            assert store.claims == claims_at_start  # every row came with the transaction that wrote it
            assert sum(store.finishes) == 30 and max(store.finishes) > 1  # recorded a batch at a time
            rows, _ = await store.list_deliveries(limit=100)
            assert {d.status for d in rows} == {"succeeded"} and len(rows) == 30
        finally:
            await worker.stop()
            await store.close()


async def _ring_one(store: SQLiteStore, i: int) -> None:
    update = CallUpdate(provider="twilio", provider_call_id=f"CA{i:032d}", raw_status="ringing", state=CallState.RINGING)
    await store.apply_update(update, run_id=f"run-{i}")


async def test_rows_a_full_worker_left_in_the_outbox_are_claimed_as_slots_free(tmp_path: Path) -> None:
    with Receiver(lambda n, path: (200, {}, b"{}", 0.1)) as receiver:
        store, worker = await _direct(tmp_path, lambda store: DeliveryWorker(
            store, [_subscription(receiver)], {}, settings=WorkerSettings(concurrency=2, prefetch=1, poll_seconds=30)))
        try:
            most = [0]

            async def watch() -> None:
                while True:
                    most[0] = max(most[0], worker.inflight["crm"])
                    await asyncio.sleep(0.005)

            watching = asyncio.ensure_future(watch())
            await asyncio.gather(*(_ring_one(store, i) for i in range(12)))  # room for 2: 10 wait for a claim
            await eventually(lambda: len(receiver.requests) == 12)
            watching.cancel()
            assert store.claims > 1  # taken as the slots freed, long before the 30 s poll
            assert 2 <= most[0] <= 4  # its room, and at most one group commit's worth more
            assert sorted(r["path"] for r in receiver.requests) == sorted(f"/hooks/run-{i}" for i in range(12))
        finally:
            await worker.stop()
            await store.close()


async def test_an_attempt_lost_with_its_process_is_sent_again(tmp_path: Path) -> None:
    from gateway.webhooks.attempts import AttemptLost

    with Receiver() as receiver:
        store, worker = await _direct(tmp_path, lambda store: DeliveryWorker(
            store, [_subscription(receiver)], {}, settings=WorkerSettings(poll_seconds=30)))
        lost = []

        async def remote(delivery):
            if not lost:
                lost.append(delivery.id)
                raise AttemptLost("the delivery process ended before it answered")
            return await worker.attempts.make(delivery)

        worker.send_through(remote, ["crm"])
        try:
            await _ring_one(store, 0)
            await eventually(lambda: len(receiver.requests) == 1 and worker.delivered == 1)
            (row,), _ = await store.list_deliveries(limit=10)
            assert row.id == lost[0] and row.status == "succeeded"  # the same row, released and sent again
            _, attempts = await store.get_delivery(row.id)
            assert [a.status for a in attempts] == [200]  # the lost try left no attempt behind
        finally:
            await worker.stop()
            await store.close()


def _retrying(receiver: Receiver, timeout: float = 5) -> Subscription:
    return Subscription.model_validate({
        "name": "crm", "events": ["call.*"], "url": receiver.url + "/hooks/{{workflow_run_id}}",
        "signing": {"scheme": "none"}, "timeout": timeout, "allow_networks": ["127.0.0.0/8"],
        "retry": {"schedule": [0.3, 0.3, 0.3], "jitter": 0},
    })


async def _attempts_of_the_one_row(store: SQLiteStore) -> list:
    (row,), _ = await store.list_deliveries(limit=10)
    return (await store.get_delivery(row.id))[1]


async def test_an_attempt_that_raises_is_recorded_and_retried_by_the_schedule(tmp_path: Path) -> None:
    """A bug inside an attempt (here: deciding after the answer came) is a failed attempt,
    recorded, and the row goes again by the retry schedule: not unrecorded until its lease
    ends, nor again and again at once."""
    with Receiver() as receiver:
        store, worker = await _direct(tmp_path, lambda store: DeliveryWorker(
            store, [_retrying(receiver)], {}, settings=WorkerSettings(poll_seconds=0.1)))
        decide = worker.attempts.decide
        crashes = []

        def buggy(*args, **kwargs):
            if not crashes:
                crashes.append(1)
                raise RuntimeError("a bug")
            return decide(*args, **kwargs)

        worker.attempts.decide = buggy
        try:
            await _ring_one(store, 0)
            await eventually(lambda: worker.delivered == 1, what="the row delivered on its next scheduled attempt")
            attempts = await _attempts_of_the_one_row(store)
            assert [(a.outcome, a.status) for a in attempts] == [("retry", None), ("success", 200)]
            assert "crashed (RuntimeError" in attempts[0].error
            assert len(receiver.requests) == 2
        finally:
            await worker.stop()
            await store.close()


async def test_a_remote_attempt_that_raises_or_never_answers_is_recorded_and_retried_by_the_schedule(tmp_path: Path) -> None:
    with Receiver() as receiver:
        store, worker = await _direct(tmp_path, lambda store: DeliveryWorker(
            store, [_retrying(receiver, timeout=0.5)], {}, settings=WorkerSettings(poll_seconds=0.1)))
        calls = []

        async def remote(delivery):
            calls.append(delivery.id)
            if len(calls) == 1:
                raise RuntimeError("the pipe broke in a new way")
            if len(calls) == 2:
                await asyncio.Event().wait()  # a delivery process that never answers
            return await worker.attempts.make(delivery)

        worker.send_through(remote, ["crm"])
        try:
            await _ring_one(store, 0)
            await eventually(lambda: worker.delivered == 1, timeout=30, what="the row delivered on its third attempt")
            attempts = await _attempts_of_the_one_row(store)
            assert [(a.outcome, a.status) for a in attempts] == [("retry", None), ("retry", None), ("success", 200)]
            assert "crashed (RuntimeError" in attempts[0].error
            assert "no result within 5.5 s" in attempts[1].error  # the timeout + 5 s, inside the lease
            assert len(calls) == 3 and len(receiver.requests) == 1
        finally:
            await worker.stop()
            await store.close()


async def test_a_late_503_from_a_lease_that_expired_does_not_undo_a_delivery(tmp_path: Path) -> None:
    """Worker A's attempt outlives its lease (1 s, the endpoint answers after 3 s); worker B takes
    the row over and delivers it. A's late 503 is recorded as history and changes nothing: the row
    stays delivered and is not sent a third time."""
    with Receiver(lambda n, path: (503, {}, b"{}", 3.0) if n == 0 else (200, {}, b"{}", 0.0)) as receiver:
        store = SQLiteStore(str(tmp_path / "gateway.db"))
        sub = _retrying(receiver)
        slow = DeliveryWorker(store, [sub], {}, settings=WorkerSettings(lease_seconds=1, poll_seconds=0.1))
        other = DeliveryWorker(store, [sub], {}, settings=WorkerSettings(poll_seconds=0.1))
        store.set_fanout(EventFanout([Route("crm", ("call.*",), True)]), lambda: (slow.wake(), other.wake()))
        await store.open()
        await slow.start()
        try:
            await _ring_one(store, 0)
            await eventually(lambda: receiver.requests, what="the slow attempt on the wire")
            await other.start()
            await eventually(lambda: slow.late_finishes == 1, what="the slow worker's late finish")
            await asyncio.sleep(1.0)  # a 503 taken at its word would have sent it again after 0.3 s
            (row,), _ = await store.list_deliveries(limit=10)
            found, attempts = await store.get_delivery(row.id)
            assert found.status == "succeeded" and found.attempts == 1
            assert sorted(a.status for a in attempts) == [200, 503]
            assert len(receiver.requests) == 2 and slow.delivered + other.delivered == 1  # whichever took it over (the same owner, under a new lease, counts too)
        finally:
            await asyncio.gather(slow.stop(), other.stop())
            await store.close()
