"""The event envelope every outbound event shares, and time-ordered event ids."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.calls.record import isoformat

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_event_id(prefix: str = "evt", now: float | None = None) -> str:
    """A ULID-style id (48-bit ms time + 80 random bits, Crockford base32): sortable, no dots."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


@dataclass
class Event:
    """One emitted event. `seq` is the store's global order (0 until stored)."""

    type: str
    workflow_run_id: str | None
    occurred_at: datetime
    data: dict[str, Any]
    id: str = field(default_factory=new_event_id)
    seq: int = 0

    def envelope(self) -> dict[str, Any]:
        """The default webhook body: `{"type", "timestamp", "data"}` plus the id and run."""
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": isoformat(self.occurred_at),
            "workflow_run_id": self.workflow_run_id,
            "data": self.data,
        }
