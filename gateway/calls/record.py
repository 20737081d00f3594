"""The call record: what the gateway knows about one call (one `workflow_run_id`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from gateway.calls.states import CallState


def utcnow() -> datetime:
    """Aware UTC now; every stored time is aware UTC."""
    return datetime.now(UTC)


@lru_cache(maxsize=1024)
def isoformat(value: datetime | None) -> str | None:
    """RFC 3339 text with a `Z`, or None. Cached: the same few times (a call's, a transaction's
    `now`) are written again and again, and formatting costs ~2 us each time."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


RECORDING_CHANNELS: dict[str, int] = {"caller": 0, "agent": 1}
"""A call's recording is one stereo WAV: the caller's side on the left channel, the agent's on
the right. Its link with `&channel=caller` (or `agent`) serves that side alone."""


def channel_link(recording_url: str | None, channel: str) -> str | None:
    """The link to one side (`RECORDING_CHANNELS`) of the recording at `recording_url`."""
    if not recording_url:
        return None
    return f"{recording_url}{'&' if '?' in recording_url else '?'}channel={channel}"


@dataclass
class CallRecord:
    """One call as stored; `to_dict()` is the public JSON shape (API, `call.ended`, templates)."""

    workflow_run_id: str
    workflow_id: str | None = None
    user_id: str | None = None
    provider: str | None = None
    provider_call_id: str | None = None
    state: CallState = CallState.INITIATED
    from_number: str | None = None
    to_number: str | None = None
    direction: str | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration: int | None = None
    voicemail: bool = False
    answered_by: str | None = None
    last_sequence: int | None = None
    initial_context: dict[str, Any] = field(default_factory=dict)
    gathered_context: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)
    cost_info: dict[str, Any] = field(default_factory=dict)
    media: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data, with the public key names (`from`, `to`)."""
        return {
            "workflow_run_id": self.workflow_run_id,
            "workflow_id": self.workflow_id,
            "user_id": self.user_id,
            "provider": self.provider,
            "provider_call_id": self.provider_call_id,
            "state": self.state.value,
            "from": self.from_number,
            "to": self.to_number,
            "direction": self.direction,
            "started_at": isoformat(self.started_at),
            "answered_at": isoformat(self.answered_at),
            "ended_at": isoformat(self.ended_at),
            "duration": self.duration,
            "voicemail": self.voicemail,
            "answered_by": self.answered_by,
            "initial_context": self.initial_context,
            "gathered_context": self.gathered_context,
            "annotations": self.annotations,
            "cost_info": self.cost_info,
            "media": self.media,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }
