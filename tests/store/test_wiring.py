"""A store is given its wiring when it is made (`StoreWiring`), on every backend; a backend
that lacks a part of the `Store` interfaces (campaigns, say) cannot be made at all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from postgres_support import STORE_BACKENDS, postgres_schema_url

from gateway.calls import CallState, CallUpdate
from gateway.events.fanout import EventFanout, Route
from gateway.store import StoreWiring, open_store_for
from gateway.store.base import Store
from gateway.store.interfaces import CallStore, CampaignStore, Outbox


@contextlib.asynccontextmanager
async def store_url(backend: str, tmp_path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/gateway.db"
    elif backend == "sqlite-writer-process":
        yield f"sqlite:///{tmp_path}/gateway.db?writer=process"
    else:
        async with postgres_schema_url() as url:
            yield url


@pytest.mark.parametrize("backend", STORE_BACKENDS)
async def test_the_wiring_given_to_the_constructor_routes_and_wakes(backend, tmp_path) -> None:
    woke: list[int] = []
    wiring = StoreWiring(fanout=EventFanout([Route("crm", ("call.*",))]), on_deliveries=lambda: woke.append(1))
    async with store_url(backend, tmp_path) as url:
        store = open_store_for(url, wiring=wiring)
        await store.open()
        try:
            update = CallUpdate(
                provider="twilio", provider_call_id="CA1", raw_status="ringing", state=CallState.RINGING
            )
            await store.apply_update(update, run_id="run-1")
            rows, _ = await store.list_deliveries(limit=10)
            assert [(row.subscription, row.event.type if row.event else None) for row in rows] == [
                ("crm", "call.ringing")
            ]
            for _ in range(100):
                if woke:
                    break
                await asyncio.sleep(0.02)
            assert woke  # the claimers were told, with no setter called
        finally:
            await store.close()


async def _stub(self: Store, *args: object, **kwargs: object) -> None:
    raise NotImplementedError


def test_a_backend_without_campaigns_cannot_be_made() -> None:
    campaigns = CampaignStore.__abstractmethods__
    assert {"create_campaign", "claim_campaign_contacts", "update_campaign"} <= campaigns
    whole = type("Whole", (Store,), dict.fromkeys(Store.__abstractmethods__, _stub))
    whole()  # every interface implemented: made
    half = type("CallsAndOutboxOnly", (Store,), dict.fromkeys(Store.__abstractmethods__ - campaigns, _stub))
    with pytest.raises(TypeError, match="abstract") as refused:
        half()
    assert "create_campaign" in str(refused.value)
    assert CallStore.__abstractmethods__ | Outbox.__abstractmethods__ | campaigns <= Store.__abstractmethods__


@pytest.mark.parametrize("backend", [name for name in STORE_BACKENDS if name != "sqlite-writer-process"])
async def test_the_store_stamps_with_the_clock_it_is_given(backend, tmp_path) -> None:
    """(The writer process runs its transactions on its own process's clock: not here.)"""
    at = datetime(2031, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
    async with store_url(backend, tmp_path) as url:
        store = open_store_for(url, wiring=StoreWiring(clock=lambda: at))
        await store.open()
        try:
            update = CallUpdate(
                provider="twilio", provider_call_id="CA9", raw_status="ringing", state=CallState.RINGING
            )
            applied = await store.apply_update(update, run_id="run-9")
            record = await store.get_call("run-9")
            assert record is not None and (record.created_at, record.updated_at) == (at, at)
            assert [entry.received_at for entry in await store.get_timeline("run-9")] == [at]
            assert [event.occurred_at for event in applied.events] == [at]
        finally:
            await store.close()
