"""The campaign part of the `Store` contract (gateway.dial): every backend must pass these."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from gateway.calls import CallState, CallUpdate
from gateway.calls.record import utcnow
from gateway.events.envelope import Event
from gateway.store import CallSeed, StoreError
from gateway.store.base import ClaimLost
from gateway.store.campaigns import Campaign, CampaignContact, CampaignEvent


def make_campaign(campaign_id="cmp-1", *, at=None, status="running", **options):
    at = at or utcnow()
    return Campaign(id=campaign_id, name=f"Campaign {campaign_id}", workflow_id="wf", user_id="u", provider="twilio",
                    from_number="+14155550199", status=status, options=options, origin="https://gw.example.com",
                    total=0, created_at=at, updated_at=at, webhook_secret="whsec_x", started_at=at)


def make_contacts(campaign_id, n):
    return [CampaignContact(campaign_id=campaign_id, position=i, phone=f"+1415555{100 + i:04d}", name=f"C{i}",
                            context={"i": i, "tag": "ü"}) for i in range(n)]


async def create(store, campaign_id="cmp-1", n=3, *, events=(), **kw):
    campaign = make_campaign(campaign_id, **kw)
    contacts = make_contacts(campaign_id, n)
    campaign.total = n
    await store.create_campaign(campaign, contacts, events)
    return campaign


def event(kind, run_id=None, **data):
    return Event(type=kind, workflow_run_id=run_id, occurred_at=utcnow(), data=data)


async def test_backend_supports_campaigns(store):
    assert store.supports_campaigns is True


async def test_create_and_get_round_trip(store):
    store.set_fanout(lambda e: [("ops", False)] if e.type.startswith("campaign.") else [])
    started = CampaignEvent(event("campaign.started", campaign="cmp-1"), inline=["inline:cmp-1:batch"])
    made = await create(store, n=3, events=[started], max_calls=10, webhooks={"onBatchComplete": "https://x"})
    got = await store.get_campaign("cmp-1")
    assert got.id == "cmp-1" and got.name == "Campaign cmp-1" and got.status == "running"
    assert got.options == {"max_calls": 10, "webhooks": {"onBatchComplete": "https://x"}}
    assert got.total == 3 and got.dialed == 0 and got.webhook_secret == "whsec_x"
    assert got.created_at == made.created_at and got.started_at == made.started_at and got.completed_at is None
    assert got.counts == {"pending": 3} and got.minutes_used == 0.0
    assert await store.get_campaign("nope") is None
    # the event and both its deliveries (configured and inline) were written with the campaign
    (stored,) = await store.list_events()
    assert stored.type == "campaign.started" and stored.seq == started.event.seq > 0
    deliveries, _ = await store.list_deliveries()
    assert sorted(d.subscription for d in deliveries) == ["inline:cmp-1:batch", "ops"]
    assert all(d.event_seq == stored.seq for d in deliveries)
    contacts = await store.list_campaign_contacts("cmp-1")
    assert [c.position for c in contacts] == [0, 1, 2]
    first = contacts[0]
    assert first.phone == "+14155550100" and first.name == "C0" and first.context == {"i": 0, "tag": "ü"}
    assert first.status == "pending" and first.attempts == 0 and first.workflow_run_id is None
    assert first.updated_at == made.created_at


async def test_list_campaign_contacts_filters_and_pages(store):
    await create(store, n=5)
    await store.claim_campaign_contacts("cmp-1", ["r0", "r1"], now=utcnow())
    assert [c.position for c in await store.list_campaign_contacts("cmp-1", status="dialing")] == [0, 1]
    assert [c.position for c in await store.list_campaign_contacts("cmp-1", status="pending")] == [2, 3, 4]
    assert [c.position for c in await store.list_campaign_contacts("cmp-1", after=1, limit=2)] == [2, 3]
    assert await store.list_campaign_contacts("other") == []


async def test_list_campaigns_newest_first_with_cursor_and_status(store):
    base = utcnow()
    for i in range(5):
        await create(store, f"cmp-{i}", n=1, at=base + timedelta(seconds=i), status="paused" if i % 2 else "running")
    page, cursor = await store.list_campaigns(limit=2)
    assert [c.id for c in page] == ["cmp-4", "cmp-3"] and cursor
    assert page[0].counts == {"pending": 1}
    page2, cursor2 = await store.list_campaigns(limit=2, cursor=cursor)
    assert [c.id for c in page2] == ["cmp-2", "cmp-1"] and cursor2
    page3, cursor3 = await store.list_campaigns(limit=2, cursor=cursor2)
    assert [c.id for c in page3] == ["cmp-0"] and cursor3 is None
    paused, _ = await store.list_campaigns(status="paused")
    assert [c.id for c in paused] == ["cmp-3", "cmp-1"]
    with pytest.raises(StoreError):
        await store.list_campaigns(cursor="not-a-cursor")


async def test_claims_take_due_contacts_in_order_and_count_them(store):
    await create(store, n=3)
    now = utcnow()
    claimed = await store.claim_campaign_contacts("cmp-1", ["r0", "r1"], now=now)
    assert [(c.position, c.status, c.attempts, c.workflow_run_id) for c in claimed] == [(0, "dialing", 1, "r0"),
                                                                                         (1, "dialing", 1, "r1")]
    assert claimed[0].updated_at == now and claimed[0].next_attempt_at is None
    (last,) = await store.claim_campaign_contacts("cmp-1", ["r2", "r3"], now=now)
    assert last.position == 2 and last.workflow_run_id == "r2"
    assert await store.claim_campaign_contacts("cmp-1", ["r4"], now=now) == []
    got = await store.get_campaign("cmp-1")
    assert got.dialed == 3 and got.counts == {"dialing": 3}
    assert await store.claim_campaign_contacts("missing", ["r5"], now=now) == []


async def test_claims_respect_max_calls_and_campaign_status(store):
    await create(store, n=5, max_calls=2)
    assert len(await store.claim_campaign_contacts("cmp-1", ["a", "b", "c"], now=utcnow())) == 2
    assert await store.claim_campaign_contacts("cmp-1", ["d"], now=utcnow()) == []
    await create(store, "cmp-p", n=2, status="paused")
    assert await store.claim_campaign_contacts("cmp-p", ["e"], now=utcnow()) == []


async def test_concurrent_claims_never_share_a_contact(store):
    await create(store, n=20, max_calls=15)
    batches = await asyncio.gather(*(store.claim_campaign_contacts("cmp-1", [f"r{k}-{i}" for i in range(4)], now=utcnow())
                                      for k in range(8)))
    positions = [c.position for batch in batches for c in batch]
    assert len(positions) == len(set(positions)) == 15  # nobody twice, and max_calls holds
    assert (await store.get_campaign("cmp-1")).dialed == 15
    dialing = await store.list_campaign_contacts("cmp-1", status="dialing")
    assert sorted(c.position for c in dialing) == sorted(positions)


async def test_release_undoes_a_claim_whose_call_was_never_written(store):
    await create(store, n=2)
    first, second = await store.claim_campaign_contacts("cmp-1", ["r0", "r1"], now=utcnow())
    now = utcnow()
    assert await store.release_campaign_claim(first, now=now)
    assert not await store.release_campaign_claim(first, now=now)  # once
    (back,) = await store.list_campaign_contacts("cmp-1", status="pending")
    assert back.position == 0 and back.attempts == 0 and back.workflow_run_id is None and back.next_attempt_at is None
    assert (await store.get_campaign("cmp-1")).dialed == 1
    # a call that was written may have been dialed: no release
    await store.apply_update(CallUpdate(provider="twilio", kind="dial", state=CallState.INITIATED), run_id="r1")
    assert not await store.release_campaign_claim(second, now=now)
    assert [c.position for c in await store.list_campaign_contacts("cmp-1", status="dialing")] == [1]


async def test_a_dial_whose_claim_was_released_is_not_recorded(store):
    """The fence between two runners: the record of a campaign dial is written only while its
    contact is still dialing that run id, and a released claim is never written (so never dialed)."""
    await create(store, n=2)
    first, second = await store.claim_campaign_contacts("cmp-1", ["r0", "r1"], now=utcnow())
    dial = CallUpdate(provider="twilio", kind="dial", state=CallState.INITIATED)
    assert await store.release_campaign_claim(first, now=utcnow())
    with pytest.raises(ClaimLost):
        await store.apply_update(dial, run_id="r0", seed=CallSeed(provider="twilio", claim=("cmp-1", 0)))
    assert await store.get_call("r0") is None and await store.get_timeline("r0") == []
    # the claim still held: written, and then it can no longer be released
    applied = await store.apply_update(dial, run_id="r1", seed=CallSeed(provider="twilio", claim=("cmp-1", 1)))
    assert applied.created and applied.record.provider == "twilio"
    assert not await store.release_campaign_claim(second, now=utcnow())
    # the contact claimed again under a new run id: the old run id's dial is refused
    (again,) = await store.claim_campaign_contacts("cmp-1", ["r2"], now=utcnow())
    assert again.position == 0
    with pytest.raises(ClaimLost):
        await store.apply_update(dial, run_id="r0", seed=CallSeed(claim=("cmp-1", 0)))
    assert (await store.apply_update(dial, run_id="r2", seed=CallSeed(claim=("cmp-1", 0)))).created


async def test_a_released_retry_goes_back_to_retry(store):
    await create(store, n=1)
    (contact,) = await store.claim_campaign_contacts("cmp-1", ["r0"], now=utcnow())
    now = utcnow()
    assert await store.finish_campaign_attempt(contact, status="retry", outcome="busy", next_attempt_at=now, now=now)
    (again,) = await store.claim_campaign_contacts("cmp-1", ["r1"], now=now)
    assert again.attempts == 2
    later = utcnow()
    assert await store.release_campaign_claim(again, now=later)
    (back,) = await store.list_campaign_contacts("cmp-1")
    assert back.status == "retry" and back.attempts == 1 and back.next_attempt_at == later
    assert (await store.get_campaign("cmp-1")).dialed == 1


async def test_finish_is_guarded_and_writes_its_events(store):
    await create(store, n=2)
    first, second = await store.claim_campaign_contacts("cmp-1", ["r0", "r1"], now=utcnow())
    await store.apply_update(CallUpdate(provider="twilio", kind="dial", state=CallState.INITIATED), run_id="r0")
    await store.apply_update(CallUpdate(provider="twilio", kind="dial", state=CallState.COMPLETED, duration=90), run_id="r0")
    done = CampaignEvent(event("batch.call_completed", "r0", phone=first.phone), inline=["inline:cmp-1:call"])
    now = utcnow()
    assert await store.finish_campaign_attempt(first, status="succeeded", outcome="completed", next_attempt_at=None,
                                               now=now, events=[done])
    assert not await store.finish_campaign_attempt(first, status="failed", outcome="x", next_attempt_at=None, now=now,
                                                   events=[CampaignEvent(event("never"))])
    later = now + timedelta(minutes=1)
    assert await store.finish_campaign_attempt(second, status="retry", outcome="no-answer", next_attempt_at=later, now=now)
    contacts = {c.position: c for c in await store.list_campaign_contacts("cmp-1")}
    assert contacts[0].status == "succeeded" and contacts[0].outcome == "completed" and contacts[0].updated_at == now
    assert contacts[1].status == "retry" and contacts[1].next_attempt_at == later
    assert [e.type for e in await store.list_events(run_id="r0")][-1] == "batch.call_completed"
    assert "never" not in [e.type for e in await store.list_events(limit=500)]
    (inline,) = (await store.list_deliveries(subscription="inline:cmp-1:call"))[0]
    assert inline.event_seq == done.event.seq and inline.workflow_run_id == "r0"
    got = await store.get_campaign("cmp-1")
    assert got.counts == {"succeeded": 1, "retry": 1} and got.minutes_used == 1.5
    assert await store.claim_campaign_contacts("cmp-1", ["r2"], now=now) == []  # retry not due yet
    (retry,) = await store.claim_campaign_contacts("cmp-1", ["r2"], now=later)
    assert retry.position == 1 and retry.attempts == 2


async def test_update_campaign_moves_status_contacts_and_fields_with_events(store):
    await create(store, n=3)
    await store.claim_campaign_contacts("cmp-1", ["r0"], now=utcnow())
    now = utcnow()
    seen = []

    def events(campaign):
        seen.append(campaign)
        return [CampaignEvent(event("campaign.canceled", campaign=campaign.id, status=campaign.status),
                              inline=["inline:cmp-1:batch"])]

    moved = await store.update_campaign("cmp-1", from_statuses=["running", "paused"], status="canceled", now=now,
                                        events=events, contacts_from=["pending", "retry"], contacts_to="canceled",
                                        completed_at=now, error="stopped", error_code="canceled", quota=None)
    assert moved.status == "canceled" and moved.completed_at == now and moved.updated_at == now
    assert moved.error == "stopped" and moved.error_code == "canceled"
    assert moved.counts == {"dialing": 1, "canceled": 2}
    assert seen[0].status == "canceled" and seen[0].counts == moved.counts  # events see the updated campaign
    assert (await store.list_events())[-1].type == "campaign.canceled"
    (inline,) = (await store.list_deliveries(subscription="inline:cmp-1:batch"))[0]
    assert inline.event_seq == (await store.list_events())[-1].seq
    # not in one of from_statuses: nothing changes, no events
    assert await store.update_campaign("cmp-1", from_statuses=["running"], status="paused", now=now, events=events) is None
    assert len(seen) == 1 and (await store.get_campaign("cmp-1")).status == "canceled"
    assert await store.update_campaign("missing", from_statuses=["running"], status="paused", now=now) is None
    with pytest.raises(StoreError):
        await store.update_campaign("cmp-1", from_statuses=["canceled"], status="running", now=now, total=5)


async def test_pause_and_resume_keep_contacts(store):
    await create(store, n=2)
    paused = await store.update_campaign("cmp-1", from_statuses=["running"], status="paused", now=utcnow())
    assert paused.status == "paused" and paused.counts == {"pending": 2}
    assert await store.claim_campaign_contacts("cmp-1", ["r"], now=utcnow()) == []
    resumed = await store.update_campaign("cmp-1", from_statuses=["paused"], status="running", now=utcnow(), quota="ok")
    assert resumed.status == "running" and resumed.quota == "ok"
    assert len(await store.claim_campaign_contacts("cmp-1", ["r"], now=utcnow())) == 1


async def test_active_campaigns_and_campaigns_for_webhooks(store):
    base = utcnow()
    hooks = {"onCallComplete": "https://hooks.example.com/c"}
    await create(store, "a-run", n=1, at=base, webhooks=hooks)
    await create(store, "b-paused", n=1, at=base + timedelta(seconds=1), status="paused")
    await create(store, "c-done", n=1, at=base + timedelta(seconds=2), webhooks=hooks)
    await create(store, "d-old", n=1, at=base + timedelta(seconds=3), webhooks=hooks)
    await create(store, "e-dialing", n=1, at=base + timedelta(seconds=4), webhooks=hooks)
    await store.claim_campaign_contacts("e-dialing", ["r-e"], now=base)
    for campaign_id, completed in (("c-done", base + timedelta(minutes=5)), ("d-old", base - timedelta(days=2)),
                                   ("e-dialing", base - timedelta(days=2))):
        assert await store.update_campaign(campaign_id, from_statuses=["running"], status="completed", now=base,
                                           completed_at=completed)
    active = await store.active_campaigns()
    assert [c.id for c in active] == ["a-run", "b-paused"] and active[0].counts == {"pending": 1}
    hooked = await store.campaigns_for_webhooks()
    # b-paused has no inline webhooks; c-done and d-old ended; e-dialing still has a call up
    assert sorted(c.id for c in hooked) == ["a-run", "e-dialing"]
    hooked = await store.campaigns_for_webhooks(["c-done", "b-paused", "nope"])  # e.g. with deliveries pending
    assert sorted(c.id for c in hooked) == ["a-run", "c-done", "e-dialing"]


async def test_campaign_calls_in_flight(store):
    await create(store, n=3)
    await store.claim_campaign_contacts("cmp-1", ["r0", "r1"], now=utcnow())
    await store.apply_update(CallUpdate(provider="twilio", kind="dial", state=CallState.INITIATED), run_id="r1")
    flights = await store.campaign_calls_in_flight()
    assert [(c.position, c.workflow_run_id) for c, _ in flights] == [(0, "r0"), (1, "r1")]
    assert flights[0][1] is None and flights[1][1].workflow_run_id == "r1"
    assert flights[1][1].state == CallState.INITIATED
