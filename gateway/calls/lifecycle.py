"""The transition rules: what one provider callback does to a call. Pure.

States only move forward (initiated < ringing < answered < terminal); a terminal state
never changes; a duplicate, late or out-of-order callback is kept in the timeline but
changes nothing and emits nothing.

| field | rule |
| --- | --- |
| `state` | forward only; a terminal state (completed, busy, no-answer, failed, canceled) is final |
| `answered_at` | set once: when the call is answered (the callback's time); a call that reaches `completed` without an answered callback was answered all the same: `ended_at - duration` when the provider gives the duration, else left empty; never set for busy, no-answer, failed or canceled reached without an answer |
| `ended_at` | set once, when a terminal state is reached: the callback's time (a reconciliation passes the provider's end time), never the time it was processed |
| `duration` | set once, with `ended_at`: 0 for a call never answered (whatever ring time a provider reports); else the provider's duration, or `ended_at - answered_at` when it gives none |
| `provider`, `provider_call_id`, `from`, `to`, `direction`, `answered_by`, `started_at` | fill when empty; a value already known is never overwritten by a later callback |
| `voicemail` | set once (with `call.voicemail_detected`); a later human result does not clear it |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.calls import events
from gateway.calls.record import CallRecord
from gateway.calls.states import CallState


@dataclass(frozen=True)
class CallUpdate:
    """A provider callback, normalized. `params` is what the provider sent, for the timeline."""

    provider: str
    kind: str = "status"
    provider_call_id: str | None = None
    raw_status: str | None = None
    state: CallState | None = None
    voicemail: bool | None = None
    answered_by: str | None = None
    sequence: int | None = None
    occurred_at: datetime | None = None
    from_number: str | None = None
    to_number: str | None = None
    direction: str | None = None
    duration: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Transition:
    """The outcome of applying one update: the new record, the events, and why."""

    record: CallRecord
    events: list[str]
    changed: bool
    outcome: str  # "applied" | "created" | "duplicate" | "late" | "terminal" | "informational"


def _fill_blanks(record: CallRecord, update: CallUpdate) -> None:
    if update.provider and not record.provider:
        record.provider = update.provider
    if update.provider_call_id and not record.provider_call_id:
        record.provider_call_id = update.provider_call_id
    if update.from_number and not record.from_number:
        record.from_number = update.from_number
    if update.to_number and not record.to_number:
        record.to_number = update.to_number
    if update.direction and not record.direction:
        record.direction = update.direction


def decide_transition(current: CallRecord | None, update: CallUpdate, *, run_id: str, now: datetime) -> Transition:
    """Apply `update` to a copy of `current` (None: a run never seen) and name the events.

    The caller persists the returned record and events in one transaction.
    """
    created = current is None
    if current is None:
        record = CallRecord(workflow_run_id=run_id, created_at=now, started_at=update.occurred_at or now)
        record.state = update.state if update.state is not None else CallState.INITIATED
    else:
        record = CallRecord(**{k: getattr(current, k) for k in current.__dataclass_fields__})
        record.gathered_context = dict(current.gathered_context)
    record.updated_at = now
    _fill_blanks(record, update)
    at = update.occurred_at or now
    emitted: list[str] = []

    if current is None:
        emitted.append(events.STATE_EVENT[record.state])
        _stamp(record, record.state, at, update)
        outcome = "created"
        if update.sequence is not None:
            record.last_sequence = update.sequence
    else:
        previous = current.state
        if previous.terminal:
            # A terminal call never changes state; only still-empty descriptive fields fill.
            outcome = "terminal" if update.state is not None else "informational"
            return Transition(record=record, events=[], changed=False, outcome=outcome)
        stale = (
            update.sequence is not None
            and current.last_sequence is not None
            and update.sequence <= current.last_sequence
        )
        if update.sequence is not None and not stale:
            record.last_sequence = update.sequence
        if update.state is None:
            outcome = "informational"
        elif stale:
            outcome = "late"
        elif update.state.rank <= previous.rank:
            # Equal rank below terminal can only be the same state again.
            outcome = "duplicate" if update.state == previous else "late"
        else:
            record.state = update.state
            _stamp(record, update.state, at, update)
            emitted.append(events.STATE_EVENT[update.state])
            outcome = "applied"

    if update.answered_by and not record.answered_by:
        record.answered_by = update.answered_by
    if update.voicemail and not (current is not None and current.voicemail):
        record.voicemail = True
        emitted.append(events.CALL_VOICEMAIL_DETECTED)
    if record.state.terminal and (current is None or not current.state.terminal):
        emitted.append(events.CALL_ENDED)
    return Transition(record=record, events=emitted, changed=bool(emitted) or created, outcome=outcome)


def _stamp(record: CallRecord, state: CallState, at: datetime, update: CallUpdate) -> None:
    """The times and duration a new state sets (the table in the module docstring)."""
    if state == CallState.ANSWERED and record.answered_at is None:
        record.answered_at = at
    if not state.terminal:
        return
    record.ended_at = record.ended_at or at
    if record.answered_at is None and state == CallState.COMPLETED and update.duration:
        record.answered_at = record.ended_at - timedelta(seconds=update.duration)  # completed: it was answered
    if record.answered_at is None:
        record.duration = 0  # never answered: no talk time, whatever the provider counted
    elif update.duration is not None:
        record.duration = update.duration
    else:
        record.duration = max(0, int((record.ended_at - record.answered_at).total_seconds()))
