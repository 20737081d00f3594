"""Event envelopes and ids; fan-out of an event to matching subscriptions."""

from gateway.events.envelope import Event, new_event_id

__all__ = ["Event", "new_event_id"]
