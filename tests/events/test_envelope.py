"""Event ids: ULID-style, decoded back to their time and random bits by an independent reader."""

from __future__ import annotations

import os
import time
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.events import envelope
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
    with mock.patch.object(envelope._RANDOM, "take", return_value=int.from_bytes(random_bytes, "big")):
        prefix, value = decode(new_event_id("msg", now))
    assert prefix == "msg"
    assert value >> 80 == int(now * 1000)
    assert value & ((1 << 80) - 1) == int.from_bytes(random_bytes, "big")


def test_random_bits_come_from_the_os_ten_bytes_per_id_64_ids_per_read():
    pool = bytes(range(200)) * 4  # 800 bytes: what the reads return, in order
    reads = []

    def urandom(n):
        reads.append(n)
        start = sum(reads[:-1])
        return pool[start:start + n]

    bits = envelope._RandomBits()
    with mock.patch("gateway.events.envelope.os.urandom", side_effect=urandom):
        taken = [bits.take() for _ in range(65)]
    assert reads == [640, 640]  # one read for 64 ids, the next for the 65th
    assert taken[:64] == [int.from_bytes(pool[i * 10:i * 10 + 10], "big") for i in range(64)]
    assert taken[64] == int.from_bytes(pool[640:650], "big")


def test_a_forked_child_does_not_repeat_its_parents_random_bits():
    envelope._RANDOM.take()  # the parent's pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id's random bits, to the parent
        os.close(read)
        os.write(write, envelope._RANDOM.take().to_bytes(10, "big"))
        os._exit(0)
    os.close(write)
    child = int.from_bytes(os.read(read, 10), "big")
    os.waitpid(pid, 0)
    os.close(read)
    parent = envelope._RANDOM.take()  # the same slot of the pool the child would have reused
    assert child != parent


def test_ids_sort_by_time_and_do_not_repeat():
    start = time.time()
    ids = [new_event_id("evt", start + i / 1000) for i in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert new_event_id().startswith("evt_")


def _event(data, **kw):
    from datetime import datetime, timezone

    from gateway.events.envelope import Event

    return Event(type=kw.get("type", "call.ringing"), workflow_run_id=kw.get("run", "run-1"),
                 occurred_at=datetime(2026, 12, 6, 21, 0, 0, 123456, tzinfo=timezone.utc), data=data)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                           max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.sampled_from(["call.ringing", 'odd "type"']),
       st.sampled_from(["run-1", None, 'rün,"2']))
def test_the_envelope_written_around_the_stored_data_is_the_envelope(data, kind, run):
    from gateway import jsontext

    event = _event(data, type=kind, run=run)
    assert event.envelope_json() == jsontext.dumps_bytes(event.envelope())


def test_an_event_travels_as_its_json_text_and_reads_it_when_asked():
    import pickle

    from gateway.events.envelope import Event

    event = _event({"state": "ringing", "initial_context": {"tenant": "t1"}})
    copy = pickle.loads(pickle.dumps(event))
    assert copy._data is None and copy._json == event.data_json()  # the text came, not a dict
    assert copy.data == event.data and copy == event and copy.envelope() == event.envelope()
    stored = Event(type="call.ringing", workflow_run_id="r", occurred_at=event.occurred_at, data_json='{"a":[1,2]}')
    assert stored.data == {"a": [1, 2]} and stored.data_json() == '{"a":[1,2]}'
    assert Event(type="x", workflow_run_id=None, occurred_at=event.occurred_at).data == {}
