"""Apply provider updates: the one pure planner every store backend writes. No I/O.

Given the calls a transaction found and the provider updates it carries, in order, say what to
write: each call as it stands after them, each update's timeline entry, the events each one
emits and why (`decide_transition` holds the rules). A backend finds the calls, asks for the
plan, and writes it (one statement per table); it decides nothing itself.

Invariants (tested in tests/calls/test_planner.py without a database):
- an update finds its call by run id, else by (provider, provider call id), else creates it
  (a run id from `new_run_id` when it has none);
- a later update sees what an earlier one of the same batch did to its call, so a batch plans
  exactly what the same updates would, applied one transaction at a time;
- every update gets a timeline entry, whatever its outcome (a duplicate, late or out-of-order
  one too); only state changes emit events.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from gateway.calls.lifecycle import CallUpdate, decide_transition
from gateway.calls.record import CallRecord
from gateway.calls.seed import CallSeed
from gateway.events.envelope import Event


class UpdateItem(NamedTuple):
    """One update to plan: the callback, the run it names (None: find or mint one), and what
    the gateway knows of the call besides (fills empty fields)."""

    update: CallUpdate
    run_id: str | None = None
    seed: CallSeed | None = None


class TimelineWrite(NamedTuple):
    """One `call_timeline` row to write (a provider callback or a gateway activity). A tuple:
    a batch makes one per callback on the writer's hot path."""

    run_id: str
    received_at: datetime
    source: str
    kind: str
    outcome: str
    data: dict[str, Any]
    raw_status: str | None = None
    state: str | None = None
    sequence: int | None = None


@dataclass
class AppliedUpdate:
    """What applying one provider update did: the record as stored, the events written, and why."""

    record: CallRecord
    events: list[Event]
    outcome: str
    created: bool


class UpdatePlan(NamedTuple):
    """One update's part of a plan: its result and its timeline entry."""

    applied: AppliedUpdate
    timeline: TimelineWrite


@dataclass
class BatchPlan:
    """What a batch of updates writes: each update's plan, in order; every call it changed, as
    it stands after the batch (one upsert each); and which of those it created (no delivery of
    theirs can be pending from before)."""

    plans: list[UpdatePlan]
    changed: dict[str, CallRecord]
    created: set[str]

    @property
    def applied(self) -> list[AppliedUpdate]:
        return [plan.applied for plan in self.plans]

    @property
    def timeline(self) -> list[TimelineWrite]:
        return [plan.timeline for plan in self.plans]

    @property
    def events(self) -> list[list[Event]]:
        """Each update's events, in order (one group per update)."""
        return [plan.applied.events for plan in self.plans]


def event_data(record: CallRecord, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data of a `call.*` event: the whole call record, plus event-specific `detail`."""
    data = record.to_dict()
    if extra:
        data["detail"] = extra
    return data


def callback_entry(run_id: str, update: CallUpdate, outcome: str, now: datetime) -> TimelineWrite:
    """A provider callback's timeline entry: what it said, and what it did (`outcome`)."""
    return TimelineWrite(
        run_id=run_id,
        received_at=now,
        source=update.provider,
        kind=update.kind,
        outcome=outcome,
        raw_status=update.raw_status,
        state=update.state.value if update.state else None,
        sequence=update.sequence,
        data=update.params,
    )


def lookup_keys(items: Iterable[UpdateItem]) -> tuple[list[str], list[tuple[str, str]]]:
    """What to look the calls of `items` up by: their run ids and (provider, call id) pairs,
    each once, in first-seen order."""
    runs = list(dict.fromkeys(item.run_id for item in items if item.run_id))
    pairs = list(
        dict.fromkeys(
            (item.update.provider, item.update.provider_call_id) for item in items if item.update.provider_call_id
        )
    )
    return runs, pairs


def plan_updates(
    items: Sequence[UpdateItem],
    found: Iterable[CallRecord],
    *,
    now: datetime,
    new_run_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> BatchPlan:
    """Plan each update of `items`, in order, as it would apply alone (see the module).

    `found` are the calls that exist, as read in the transaction (those of `lookup_keys`; more
    are harmless). `now` stamps the records, events and timeline entries."""
    calls = {record.workflow_run_id: record for record in found}
    existed = set(calls)
    by_provider = {
        (r.provider, r.provider_call_id): run for run, r in calls.items() if r.provider and r.provider_call_id
    }
    changed: dict[str, CallRecord] = {}
    plans: list[UpdatePlan] = []
    for update, run_id, seed in items:
        current = calls.get(run_id) if run_id else None
        if current is None and update.provider_call_id:
            match = by_provider.get((update.provider, update.provider_call_id))
            current = calls.get(match) if match else None
        target = current.workflow_run_id if current else (run_id or new_run_id())
        transition = decide_transition(current, update, run_id=target, now=now)
        record = transition.record
        if seed is not None:
            seed.fill(record)
        calls[target] = changed[target] = record
        if record.provider and record.provider_call_id:
            by_provider[(record.provider, record.provider_call_id)] = target
        events = [
            Event(type=name, workflow_run_id=target, occurred_at=now, data=event_data(record))
            for name in transition.events
        ]
        applied = AppliedUpdate(record=record, events=events, outcome=transition.outcome, created=current is None)
        plans.append(UpdatePlan(applied, callback_entry(target, update, transition.outcome, now)))
    return BatchPlan(plans, changed, set(changed) - existed)


__all__ = [
    "AppliedUpdate",
    "BatchPlan",
    "TimelineWrite",
    "UpdateItem",
    "UpdatePlan",
    "callback_entry",
    "event_data",
    "lookup_keys",
    "plan_updates",
]
