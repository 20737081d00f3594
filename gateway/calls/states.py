"""Normalized call states and the one table that maps provider statuses onto them."""

from __future__ import annotations

from enum import StrEnum


class CallState(StrEnum):
    """A call's normalized lifecycle state (the same words for every provider)."""

    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def rank(self) -> int:
        """Position in the forward-only order initiated < ringing < answered < terminal."""
        return _RANK.get(self, 3)


TERMINAL_STATES = frozenset(
    {CallState.COMPLETED, CallState.BUSY, CallState.NO_ANSWER, CallState.FAILED, CallState.CANCELED}
)

_RANK = {CallState.INITIATED: 0, CallState.RINGING: 1, CallState.ANSWERED: 2}

# The single source of truth for provider status words. A status absent from a provider's
# row (Vonage "record", "input", "transfer", Twilio stream events...) changes no state.
PROVIDER_STATUS: dict[str, dict[str, CallState]] = {
    "twilio": {
        "queued": CallState.INITIATED,
        "initiated": CallState.INITIATED,
        "ringing": CallState.RINGING,
        "in-progress": CallState.ANSWERED,
        "completed": CallState.COMPLETED,
        "busy": CallState.BUSY,
        "no-answer": CallState.NO_ANSWER,
        "canceled": CallState.CANCELED,
        "failed": CallState.FAILED,
    },
    "vonage": {
        "started": CallState.INITIATED,
        "ringing": CallState.RINGING,
        "answered": CallState.ANSWERED,
        "completed": CallState.COMPLETED,
        "busy": CallState.BUSY,
        "rejected": CallState.BUSY,
        "timeout": CallState.NO_ANSWER,
        "unanswered": CallState.NO_ANSWER,
        "cancelled": CallState.CANCELED,
        "failed": CallState.FAILED,
    },
    # TeXML status callbacks: Twilio's words (the CallResource's statuses plus queued/initiated).
    "telnyx": {
        "queued": CallState.INITIATED,
        "initiated": CallState.INITIATED,
        "ringing": CallState.RINGING,
        "in-progress": CallState.ANSWERED,
        "answered": CallState.ANSWERED,
        "completed": CallState.COMPLETED,
        "busy": CallState.BUSY,
        "no-answer": CallState.NO_ANSWER,
        "canceled": CallState.CANCELED,
        "failed": CallState.FAILED,
    },
    # Plivo's CallStatus: ring_url "ringing", answer_url "in-progress", hangup_url the end
    # ("completed" inbound; "completed", "busy", "failed", "timeout", "no-answer" outbound).
    "plivo": {
        "ringing": CallState.RINGING,
        "in-progress": CallState.ANSWERED,
        "completed": CallState.COMPLETED,
        "busy": CallState.BUSY,
        "failed": CallState.FAILED,
        "timeout": CallState.NO_ANSWER,
        "no-answer": CallState.NO_ANSWER,
        "cancel": CallState.CANCELED,
        "canceled": CallState.CANCELED,
    },
    # Events about the websocket leg an NCCO `connect` opens (sent to its eventUrl). Its
    # started/ringing/answered say nothing about the caller's leg; when it ends or cannot
    # connect, the NCCO is over and so is the call.
    "vonage-websocket": {
        "completed": CallState.COMPLETED,
        "disconnected": CallState.COMPLETED,
        "failed": CallState.FAILED,
        "unanswered": CallState.FAILED,
        "rejected": CallState.FAILED,
        "timeout": CallState.FAILED,
    },
}


def normalize_status(provider: str, status: str | None) -> CallState | None:
    """Map a provider's raw status word to a `CallState`, or None when it is not a state."""
    if not status:
        return None
    return PROVIDER_STATUS.get(provider, {}).get(status.strip().lower())
