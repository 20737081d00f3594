"""The event envelope every outbound event shares, and time-ordered event ids."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.calls.record import isoformat

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]  # two digits per 10 bits
_SHIFTS = tuple(range(120, -1, -10))


class _RandomBits(threading.local):
    """80-bit random numbers from the OS, read 64 at a time (one `getrandom` call instead of
    one per id), per thread; a forked child starts afresh so it never repeats its parent's."""

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0

    def take(self) -> int:
        if self.at >= len(self.pool):
            self.pool, self.at = os.urandom(640), 0
        start = self.at
        self.at = start + 10
        return int.from_bytes(self.pool[start:start + 10], "big")


_RANDOM = _RandomBits()
os.register_at_fork(after_in_child=lambda: setattr(_RANDOM, "pool", b""))


def new_event_id(prefix: str = "evt", now: float | None = None) -> str:
    """A ULID-style id (48-bit ms time + 80 random bits, Crockford base32): sortable, no dots.

    The 128 bits are written as 26 digits, two zero bits in front, as ULIDs are; two digits at a
    time from a table (~4 us; a digit-by-digit loop took ~28, on the callback's write path)."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFF_FFFF_FFFF
    value = (ms << 80) | _RANDOM.take()
    return prefix + "_" + "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


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
