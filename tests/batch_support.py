"""Callbacks to write one at a time and in batches, and what a store holds after them: the
differential tests of every backend's batched callbacks (tests/store/test_*_batch.py)."""

from __future__ import annotations

import asyncio
import random

from gateway.calls import CallState, CallUpdate
from gateway.store.base import Store

STATES = [CallState.INITIATED, CallState.RINGING, CallState.ANSWERED, CallState.COMPLETED, CallState.BUSY,
          CallState.NO_ANSWER, CallState.FAILED]


def script(seed: int, n: int = 120) -> list[tuple[CallUpdate, str | None]]:
    """Callbacks for a dozen calls in a random order: repeats, late and out-of-order states,
    sequence numbers, AMD results, and some addressed by the provider's call id only."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        call = rng.randrange(12)
        state = rng.choice(STATES)
        update = CallUpdate(provider="twilio", provider_call_id=f"CA{call:032d}", raw_status=state.value, state=state,
                            sequence=rng.choice([None, rng.randrange(20)]),
                            answered_by=rng.choice([None, None, "human", "machine_start"]),
                            voicemail=None, params={"CallSid": f"CA{call:032d}", "n": str(rng.random())})
        if update.answered_by == "machine_start":
            update = CallUpdate(**{**update.__dict__, "voicemail": True})
        run = f"run-{call}" if rng.random() < 0.8 or call >= 6 else None  # None: match by CallSid
        out.append((update, run))
    return out


async def snapshot(store: Store) -> dict:
    """Everything the callbacks wrote, by the provider's call id (a run id the gateway minted
    differs between stores), without ids and times."""
    calls, _ = await store.list_calls(limit=500)
    out: dict = {}
    names = {call.workflow_run_id: call.provider_call_id for call in calls}
    for call in calls:
        record = call.to_dict()
        for name in ("workflow_run_id", "created_at", "updated_at", "started_at", "answered_at", "ended_at", "duration"):
            record.pop(name)
        timeline = [(t.outcome, t.raw_status, t.state, t.sequence) for t in await store.get_timeline(call.workflow_run_id)]
        events = [e.type for e in await store.list_events(run_id=call.workflow_run_id, limit=500)]
        out[call.provider_call_id] = (call.workflow_run_id.startswith("run-"), record, timeline, events)
    deliveries, _ = await store.list_deliveries(limit=500)
    out["deliveries"] = sorted((names[d.workflow_run_id], d.subscription, d.event.type, d.status) for d in deliveries)
    return out


async def one_then_batched(one: Store, batched: Store, callbacks: list[tuple[CallUpdate, str | None]],
                           one_taken: list, batch_taken: list) -> list:
    """Write `callbacks` one at a time into `one`, and in waves of 30 at once into `batched`
    (later waves find calls, and rows, of earlier ones); check both wrote the same. Returns
    what `batched` answered."""
    alone = [await one.apply_update(update, run_id=run) for update, run in callbacks]
    together: list = []
    for wave in range(0, len(callbacks), 30):
        together += await asyncio.gather(*(batched.apply_update(update, run_id=run) for update, run in callbacks[wave:wave + 30]))
    assert [(a.outcome, a.created, [e.type for e in a.events], a.record.state) for a in alone] == \
           [(b.outcome, b.created, [e.type for e in b.events], b.record.state) for b in together]
    assert await snapshot(one) == await snapshot(batched)
    assert sorted((d.event.data["provider_call_id"], d.event.type) for d in one_taken) == \
           sorted((d.event.data["provider_call_id"], d.event.type) for d in batch_taken)
    return together
