"""Call records, normalized lifecycle states, transition rules and event names. Pure."""

from gateway.calls import events
from gateway.calls.lifecycle import CallUpdate, Transition, decide_transition
from gateway.calls.states import (
    PROVIDER_STATUS,
    TERMINAL_STATES,
    CallState,
    normalize_status,
)

__all__ = [
    "PROVIDER_STATUS",
    "TERMINAL_STATES",
    "CallState",
    "CallUpdate",
    "Transition",
    "decide_transition",
    "events",
    "normalize_status",
]
