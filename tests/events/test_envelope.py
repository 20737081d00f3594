"""Event ids: ULID-style, decoded back to their time and random bits by an independent reader."""

from __future__ import annotations

import time
from unittest import mock

import pytest

from gateway.events.envelope import new_event_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def decode(ident: str) -> tuple[str, int]:
    """The prefix and the 128-bit value of an id, read digit by digit (ULID's spec)."""
    prefix, _, digits = ident.partition("_")
    assert len(digits) == 26 and set(digits) <= set(CROCKFORD)
    value = 0
    for char in digits:
        value = value * 32 + CROCKFORD.index(char)
    assert value < 1 << 128  # the first digit carries the two spare bits: 0-7
    return prefix, value


@pytest.mark.parametrize("random_bytes", [bytes(10), b"\xff" * 10, bytes(range(10)), b"\x80" + bytes(9)])
@pytest.mark.parametrize("now", [0.0, 1.5, 1764028800.123, (2**48 - 1) / 1000])
def test_id_holds_the_millisecond_time_and_the_random_bits(now, random_bytes):
    with mock.patch("gateway.events.envelope.os.urandom", return_value=random_bytes):
        prefix, value = decode(new_event_id("msg", now))
    assert prefix == "msg"
    assert value >> 80 == int(now * 1000)
    assert value & ((1 << 80) - 1) == int.from_bytes(random_bytes, "big")


def test_ids_sort_by_time_and_do_not_repeat():
    start = time.time()
    ids = [new_event_id("evt", start + i / 1000) for i in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert new_event_id().startswith("evt_")
