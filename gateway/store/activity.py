"""What a media session's write may change of its call. Pure; both backends apply it inside
the transaction that writes the activity, on the call row they hold.

Invariants:
- One media session owns a call's media at a time: the last one to connect (`media.connected`
  records it in `media.session`); a replaced session's later writes change nothing.
- A finished call stays finished: no media session connects to a call in a terminal state, no
  event follows the call's end, and the owning session may only record its own end
  (`media.ended`, once, without events): counters are never written over, nothing else added.
- `call.started` is emitted once per call, whichever session first carries audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.calls.planner import TimelineWrite, event_data
from gateway.calls.record import CallRecord
from gateway.events.envelope import Event
from gateway.store.errors import StoreError

MEDIA_CONNECTED = "media.connected"
MEDIA_STARTED = "media.started"
MEDIA_ENDED = "media.ended"


class CallEnded(StoreError):
    """The call is in a terminal state: no media session may start for it."""


@dataclass(frozen=True)
class Admitted:
    """What of an activity is written (the timeline entry always, when admitted at all)."""

    events: Sequence[tuple[str, dict[str, Any]]] = ()
    gathered_context: dict[str, Any] | None = None
    annotations: dict[str, Any] | None = None
    media: dict[str, Any] | None = None


def admit_activity(
    record: CallRecord,
    *,
    kind: str,
    session: str | None,
    events: Sequence[tuple[str, dict[str, Any]]] = (),
    gathered_context: dict[str, Any] | None = None,
    annotations: dict[str, Any] | None = None,
    media: dict[str, Any] | None = None,
) -> Admitted | None:
    """The part of the activity to write, or None to write nothing. `session` None: the
    gateway's own entries (dialer), written as they are. Raises `CallEnded` for a
    `media.connected` to a finished call."""
    if session is None:
        return Admitted(events, gathered_context, annotations, media)
    if kind == MEDIA_CONNECTED:
        if record.state.terminal:
            raise CallEnded(f"call {record.workflow_run_id} has ended ({record.state.value})")
        return Admitted(media={**(media or {}), "session": session, "ended": False})
    if record.media.get("session") != session:
        return None  # a replaced session (or one that never connected)
    if record.state.terminal:
        if kind != MEDIA_ENDED or record.media.get("ended"):
            return None
        return Admitted(media=media)  # the owner's own end: its counters, once; no event after the call's end
    if kind == MEDIA_STARTED and record.media.get("started"):
        events = ()  # a reconnected session: the call started already
    return Admitted(events, gathered_context, annotations, media)


@dataclass(slots=True)
class ActivityPlan:
    """What a `record_activity` transaction writes: the call (None: unchanged), its timeline
    entry, and the events."""

    record: CallRecord | None
    timeline: TimelineWrite
    events: list[Event]


def plan_activity(
    record: CallRecord,
    *,
    source: str,
    kind: str,
    data: dict[str, Any],
    now: datetime,
    session: str | None = None,
    events: Sequence[tuple[str, dict[str, Any]]] = (),
    gathered_context: dict[str, Any] | None = None,
    annotations: dict[str, Any] | None = None,
    media: dict[str, Any] | None = None,
) -> ActivityPlan | None:
    """The writes of one gateway activity on `record` (the call as read in the transaction; it
    is updated in place), or None to write nothing (`admit_activity`). Pure."""
    admitted = admit_activity(
        record,
        kind=kind,
        session=session,
        events=events,
        gathered_context=gathered_context,
        annotations=annotations,
        media=media,
    )
    if admitted is None:
        return None
    changed = None
    if admitted.gathered_context or admitted.annotations or admitted.media:
        record.gathered_context.update(admitted.gathered_context or {})
        record.annotations.update(admitted.annotations or {})
        record.media.update(admitted.media or {})
        record.updated_at = now
        changed = record
    run_id = record.workflow_run_id
    entry = TimelineWrite(run_id=run_id, received_at=now, source=source, kind=kind, outcome="recorded", data=data)
    emitted = [
        Event(type=name, workflow_run_id=run_id, occurred_at=now, data=event_data(record, extra))
        for name, extra in admitted.events
    ]
    return ActivityPlan(changed, entry, emitted)
