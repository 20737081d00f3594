"""The event envelope every outbound event shares, and time-ordered event ids."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from typing import Any

from gateway import jsontext
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
        return int.from_bytes(self.pool[start : start + 10], "big")


_RANDOM = _RandomBits()
os.register_at_fork(after_in_child=lambda: setattr(_RANDOM, "pool", b""))


def new_event_id(prefix: str = "evt", now: float | None = None) -> str:
    """A ULID-style id (48-bit ms time + 80 random bits, Crockford base32): sortable, no dots.

    The 128 bits are written as 26 digits, two zero bits in front, as ULIDs are; two digits at a
    time from a table (~4 us; a digit-by-digit loop took ~28, on the callback's write path)."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFF_FFFF_FFFF
    value = (ms << 80) | _RANDOM.take()
    return prefix + "_" + "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


class Event:
    """One emitted event. `seq` is the store's global order (0 until stored).

    Its data is a dict, or the JSON text it was stored as (`data_json`), read into a dict only
    when asked. Between processes an event travels as that text (a call record as a dict cost
    several times as much to pickle), and the default webhook body is written around it
    (`envelope_json`) without writing the data again. The data is not changed once the event
    is made: the text and the dict are the same data."""

    __slots__ = ("_data", "_json", "id", "occurred_at", "seq", "type", "workflow_run_id")

    def __init__(
        self,
        type: str,
        workflow_run_id: str | None,
        occurred_at: datetime,
        data: dict[str, Any] | None = None,
        id: str | None = None,
        seq: int = 0,
        *,
        data_json: str | None = None,
    ) -> None:
        self.type = type
        self.workflow_run_id = workflow_run_id
        self.occurred_at = occurred_at
        self.id = id or new_event_id()
        self.seq = seq
        self._data = {} if data is None and data_json is None else data
        self._json = data_json

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = jsontext.loads(self._json)  # type: ignore[arg-type]
        return self._data

    def data_json(self) -> str:
        """The data as compact JSON text (as stored)."""
        if self._json is None:
            self._json = jsontext.dumps(self._data)
        return self._json

    def envelope(self) -> dict[str, Any]:
        """The default webhook body: `{"type", "timestamp", "data"}` plus the id and run."""
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": isoformat(self.occurred_at),
            "workflow_run_id": self.workflow_run_id,
            "data": self.data,
        }

    def envelope_json(self) -> bytes:
        """`envelope()` as `jsontext.dumps_bytes` writes it, around the data's stored text."""
        dumps = jsontext.dumps
        return (
            f'{{"id":{dumps(self.id)},"type":{dumps(self.type)},"timestamp":{dumps(isoformat(self.occurred_at))},'
            f'"workflow_run_id":{dumps(self.workflow_run_id)},"data":{self.data_json()}}}'
        ).encode()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_event, (self.type, self.workflow_run_id, self.occurred_at, self.id, self.seq, self.data_json()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.type, self.workflow_run_id, self.occurred_at, self.id, self.seq, self.data) == (
            other.type,
            other.workflow_run_id,
            other.occurred_at,
            other.id,
            other.seq,
            other.data,
        )

    def __repr__(self) -> str:
        return (
            f"Event(type={self.type!r}, workflow_run_id={self.workflow_run_id!r}, occurred_at={self.occurred_at!r},"
            f" id={self.id!r}, seq={self.seq!r})"
        )


def _event(type: str, workflow_run_id: str | None, occurred_at: datetime, id: str, seq: int, data_json: str) -> Event:
    return Event(type, workflow_run_id, occurred_at, id=id, seq=seq, data_json=data_json)
