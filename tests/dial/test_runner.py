"""The campaign runner against a real store (SQLite, and PostgreSQL when reachable) and the real
Twilio SDK (talking to a local stand-in): what it finds in the store after a crash, and what it
asks the provider."""

from __future__ import annotations

import asyncio
import ipaddress
from email.utils import format_datetime
from datetime import timedelta

import pytest

from dial.fakes import FakeTwilio
from gateway.calls.lifecycle import CallUpdate
from gateway.calls.record import utcnow
from gateway.calls.states import CallState
from gateway.dial.campaigns import CampaignManager
from gateway.dial.dialer import Dialer
from gateway.dial.inline import InlineRegistry, InlineSettings
from gateway.dial.runner import CampaignRunner, RunnerSettings
from gateway.dial.spec import parse_campaign
from gateway.providers.twilio_rest import TwilioRest
from postgres_support import BACKENDS, open_store
from support import TWILIO_SID, TWILIO_TOKEN


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    async with open_store(request.param, str(tmp_path / "gateway.db")) as backend:
        yield backend


@pytest.fixture
def twilio():
    with FakeTwilio() as fake:
        yield fake


def parts(store, twilio, **settings):
    dialer = Dialer(store, {"twilio": TwilioRest(TWILIO_SID, TWILIO_TOKEN, api_base_url=twilio.url)})
    manager = CampaignManager(store, InlineRegistry(None, InlineSettings()))
    runner = CampaignRunner(store, dialer, manager, origin=lambda: "https://gw.example.com",
                            settings=RunnerSettings(poll_seconds=0.02, **settings))
    return dialer, manager, runner


async def new_campaign(manager, n=2, **options):
    spec = parse_campaign({"workflow_id": "wf", "user_id": "u", "options": {"calls_per_second": 100, **options},
                           "contacts": [{"phone": f"+1415555{100 + i:04d}"} for i in range(n)]})
    campaign, _, _ = await manager.create(spec, provider="twilio", from_number="+14155550199", origin="https://old.example.com")
    return campaign


async def until(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_a_claim_that_never_reached_the_provider_is_dialed_once_after_a_restart(store, twilio):
    dialer, manager, runner = parts(store, twilio)
    campaign = await new_campaign(manager, n=1)
    # a previous process claimed the contact and died before writing the call
    (claimed,) = await store.claim_campaign_contacts(campaign.id, ["run-lost"], now=utcnow())
    assert claimed.status == "dialing" and (await store.get_campaign(campaign.id)).dialed == 1
    await runner.start()
    try:
        sent = await asyncio.to_thread(twilio.wait_for, "create", 1)
        (contact,) = await until(lambda: _contacts(store, campaign.id, "dialing"))
    finally:
        await runner.stop()
        await dialer.close()
    assert len(twilio.of("create")) == 1 and sent[0]["body"]["To"] == ["+14155550100"]
    assert contact.attempts == 1 and contact.workflow_run_id != "run-lost"
    assert (await store.get_campaign(campaign.id)).dialed == 1  # the lost claim was not counted
    assert await store.get_call("run-lost") is None
    # URLs come from the current public origin, not the one the campaign was created under
    assert sent[0]["body"]["Url"][0].startswith("https://gw.example.com/")


async def _contacts(store, campaign_id, status):
    return await store.list_campaign_contacts(campaign_id, status=status)


async def test_a_call_silent_too_long_is_asked_of_the_provider(store, twilio):
    dialer, manager, runner = parts(store, twilio, reconcile_seconds=0.2)
    campaign = await new_campaign(manager, n=1)
    await runner.start()
    try:
        (sent,) = await asyncio.to_thread(twilio.wait_for, "create", 1)
        twilio.statuses[sent["sid"]] = "completed"  # the final callback was lost
        await until(lambda: _contacts(store, campaign.id, "succeeded"))
        await until(lambda: _status(store, campaign.id, "completed"))
    finally:
        await runner.stop()
        await dialer.close()
    assert [r["params"]["sid"] for r in twilio.of("fetch")][:1] == [sent["sid"]]
    (contact,) = await store.list_campaign_contacts(campaign.id)
    timeline = await store.get_timeline(contact.workflow_run_id)
    assert timeline[-1].kind == "reconcile" and timeline[-1].state == "completed"


async def test_reconciliation_stores_the_providers_end_time_and_duration(store, twilio):
    """A 30 s call whose final callback was lost, reconciled long after it ended: stored with the
    provider's end time and duration, not as if it had talked until it was asked."""
    dialer, manager, runner = parts(store, twilio, reconcile_seconds=0.2)
    campaign = await new_campaign(manager, n=1)
    await runner.start()
    try:
        (sent,) = await asyncio.to_thread(twilio.wait_for, "create", 1)
        (contact,) = await until(lambda: _contacts(store, campaign.id, "dialing"))
        answered = utcnow().replace(microsecond=0) - timedelta(seconds=605)
        await store.apply_update(CallUpdate(provider="twilio", provider_call_id=sent["sid"], raw_status="in-progress",
                                            state=CallState.ANSWERED, occurred_at=answered), run_id=contact.workflow_run_id)
        twilio.statuses[sent["sid"]] = "completed"
        twilio.details[sent["sid"]] = {"end_time": format_datetime(answered + timedelta(seconds=30)), "duration": "30"}
        await until(lambda: _contacts(store, campaign.id, "succeeded"))
    finally:
        await runner.stop()
        await dialer.close()
    record = await store.get_call(contact.workflow_run_id)
    assert record.state == CallState.COMPLETED and record.answered_at == answered
    assert record.ended_at == answered + timedelta(seconds=30) and record.duration == 30
    assert (await store.get_campaign(campaign.id)).minutes_used == 0.5


async def _status(store, campaign_id, status):
    campaign = await store.get_campaign(campaign_id)
    return campaign.status == status and campaign


async def test_finishing_an_attempt_happens_once(store, twilio):
    _, manager, _ = parts(store, twilio)
    campaign = await new_campaign(manager, n=1)
    (contact,) = await store.claim_campaign_contacts(campaign.id, ["run-1"], now=utcnow())
    await store.apply_update(CallUpdate(provider="twilio", kind="dial", state=CallState.BUSY), run_id="run-1")
    assert not await store.release_campaign_claim(contact, now=utcnow())  # the call exists: it may have rung
    later = utcnow() + timedelta(seconds=5)
    assert await store.finish_campaign_attempt(contact, status="retry", outcome="busy", next_attempt_at=later, now=utcnow())
    assert not await store.finish_campaign_attempt(contact, status="failed", outcome="busy", next_attempt_at=None,
                                                   now=utcnow())
    assert await store.claim_campaign_contacts(campaign.id, ["run-2"], now=utcnow()) == []  # not due yet
    (again,) = await store.claim_campaign_contacts(campaign.id, ["run-2"], now=later)
    assert again.attempts == 2 and again.workflow_run_id == "run-2"
    paused = await manager.pause(campaign.id)
    assert paused.status == "paused" and paused.counts == {"dialing": 1}
    assert await store.claim_campaign_contacts(campaign.id, ["run-3"], now=later) == []  # paused: no claims


async def test_a_finished_campaigns_webhooks_leave_the_worker_once_delivered(store, twilio):
    """Every campaign adds its inline subscriptions to the worker; once it is over and their
    deliveries are done, they are gone again (with their slots, counters and connections)."""
    from gateway.webhooks.worker import DeliveryWorker, WorkerSettings
    from support import Receiver

    with Receiver() as receiver:
        worker = DeliveryWorker(store, [], {}, settings=WorkerSettings(poll_seconds=0.05))
        store.set_fanout(lambda event: (), worker.wake)
        await worker.start()
        registry = InlineRegistry(worker, InlineSettings(allow_networks=[ipaddress.ip_network("127.0.0.0/8")]))
        manager = CampaignManager(store, registry)
        try:
            hooks = {"onBatchComplete": receiver.url + "/b", "onCallComplete": receiver.url + "/c",
                     "onBatchFailed": receiver.url + "/f"}
            campaigns = [await new_campaign(manager, n=1, webhooks=hooks) for _ in range(3)]
            names = {name for c in campaigns for name in worker.subscriptions if name.startswith(c.id)}
            assert len(names) == 9
            await manager.fail(campaigns[0].id, "no more", "TEST")
            await manager.cancel(campaigns[1].id)
            await registry.sync(store)  # campaigns[0]'s batch.failed may still be pending: kept until sent
            await until(lambda: _sent(receiver, "/f", 1))
            await until(lambda: _pending(store))
            await registry.sync(store)
            gone = {name for name in names if not name.startswith(campaigns[2].id)}
            for table in (worker.subscriptions, worker.inflight, worker._slots, worker._room, worker.attempts.subscriptions,
                          worker.clients._pools):
                assert not gone & set(table), table
            assert {name for name in worker.subscriptions if name.startswith("cmp_")} == names - gone  # still running
        finally:
            await worker.stop()


async def _sent(receiver, path, count):
    return len([r for r in receiver.requests if r["path"] == path]) >= count


async def _pending(store):
    return not await store.pending_subscriptions()
