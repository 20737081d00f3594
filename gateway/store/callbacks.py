"""Several provider callbacks applied in order to the calls they find: the pure core every
backend's batched `apply_update` shares (the backend finds the calls, then writes what this
returns, one statement per table)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.calls.lifecycle import CallUpdate, decide_transition
from gateway.calls.record import CallRecord
from gateway.events.envelope import Event
from gateway.store.base import AppliedUpdate, CallSeed, event_data


@dataclass
class AppliedBatch:
    """What a batch of callbacks does: each one's result, in order; every call it changed, as
    it stands after the batch; and each one's timeline entry (run id, the callback, outcome)."""

    applied: list[AppliedUpdate]
    changed: dict[str, CallRecord]
    timeline: list[tuple[str, CallUpdate, str]]


def apply_callbacks(
    items: Sequence[tuple[CallUpdate, str | None, CallSeed | None]], found: dict[str, CallRecord], now: datetime
) -> AppliedBatch:
    """Apply each (callback, run id, seed), in order, as `apply_update` would alone: the call is
    the run's, else the one with the provider's call id, else a new one (a fresh run id when
    None). `found` holds the calls that existed (by run id), and is updated: a later callback
    sees what an earlier one did to its call."""
    by_provider = {
        (r.provider, r.provider_call_id): run for run, r in found.items() if r.provider and r.provider_call_id
    }
    changed: dict[str, CallRecord] = {}
    timeline: list[tuple[str, CallUpdate, str]] = []
    applied: list[AppliedUpdate] = []
    for update, run_id, seed in items:
        current = found.get(run_id) if run_id else None
        if current is None and update.provider_call_id:
            match = by_provider.get((update.provider, update.provider_call_id))
            current = found.get(match) if match else None
        target = current.workflow_run_id if current else (run_id or str(uuid.uuid4()))
        transition = decide_transition(current, update, run_id=target, now=now)
        record = transition.record
        if seed is not None:
            seed.fill(record)
        found[target] = changed[target] = record
        if record.provider and record.provider_call_id:
            by_provider[(record.provider, record.provider_call_id)] = target
        timeline.append((target, update, transition.outcome))
        events = [
            Event(type=name, workflow_run_id=target, occurred_at=now, data=event_data(record))
            for name in transition.events
        ]
        applied.append(AppliedUpdate(record=record, events=events, outcome=transition.outcome, created=current is None))
    return AppliedBatch(applied, changed, timeline)
