"""What the gateway knows of a call before or besides the provider's callbacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.calls.record import CallRecord

SEED_FIELDS = ("workflow_id", "user_id", "provider", "provider_call_id", "direction", "from_number", "to_number")


@dataclass
class CallSeed:
    """What the gateway knows of a call before or besides the provider's callbacks.

    Used when the call is created, and to fill fields the provider left empty.
    """

    workflow_id: str | None = None
    user_id: str | None = None
    provider: str | None = None
    provider_call_id: str | None = None
    direction: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    initial_context: dict[str, Any] = field(default_factory=dict)
    claim: tuple[str, int] | None = None
    """(campaign id, contact position) of a campaign dial: the record is created only while that
    contact is still `dialing` this run id, checked in the transaction that writes it (else
    `ClaimLost`). This fences a dial against a claim another instance released meanwhile."""

    def fill(self, record: CallRecord) -> None:
        """Write every seed value whose record field is still empty."""
        for name in SEED_FIELDS:
            value = getattr(self, name)
            if value and not getattr(record, name):
                setattr(record, name, value)
        if self.initial_context and not record.initial_context:
            record.initial_context = dict(self.initial_context)
