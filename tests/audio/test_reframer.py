"""Reframer: exact provider frames from audio of any length, padding, clearing, alignment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audio import TWILIO_FORMAT, VONAGE_FORMAT, Reframer


def twilio() -> Reframer:
    return Reframer(TWILIO_FORMAT.frame_bytes(), TWILIO_FORMAT.silence)


def vonage() -> Reframer:
    return Reframer(VONAGE_FORMAT.frame_bytes(), VONAGE_FORMAT.silence)


def test_provider_frame_sizes() -> None:
    assert twilio().frame_bytes == 160 and twilio().silence == b"\xff"
    assert vonage().frame_bytes == 640 and vonage().silence == b"\x00\x00"


def test_cuts_exact_frames_and_keeps_the_rest() -> None:
    r = twilio()
    data = bytes(range(256)) * 2  # 512 bytes
    frames = r.push(data)
    assert [len(f) for f in frames] == [160, 160, 160]
    assert b"".join(frames) == data[:480]
    assert r.pending == 32
    frames = r.push(data[:128])
    assert frames == [data[480:] + data[:128]]
    assert r.pending == 0


def test_an_exact_frame_passes_straight_through() -> None:
    r = twilio()
    frame = bytes(160)
    assert r.push(frame)[0] is frame
    assert r.pending == 0


def test_frames_are_immutable_bytes_even_from_mutable_input() -> None:
    r = vonage()
    data = bytearray(1300)
    frames = r.push(data)
    data[:] = b"\x01" * 1300
    assert all(type(f) is bytes and f == bytes(640) for f in frames)
    assert [type(f) for f in r.push(memoryview(bytes(640 - 20)))] == [bytes]


def test_flush_pads_the_partial_frame_with_silence() -> None:
    r = twilio()
    r.push(b"\x10" * 170)
    assert r.flush() == [b"\x10" * 10 + b"\xff" * 150]
    assert r.pending == 0 and r.flush() == []


def test_flush_pads_pcm16_with_zero_samples() -> None:
    r = vonage()
    r.push(b"\x01\x02" * 5)
    assert r.flush() == [b"\x01\x02" * 5 + b"\x00" * 630]


def test_flush_with_nothing_pending_sends_nothing() -> None:
    r = vonage()
    r.push(bytes(640))
    assert r.flush() == []


def test_clear_drops_what_is_buffered() -> None:
    r = twilio()
    r.push(b"\x01" * 100)
    r.clear()
    assert r.pending == 0
    assert r.flush() == []
    assert r.push(b"\x02" * 160) == [b"\x02" * 160]


def test_pcm16_with_odd_byte_pushes_stays_aligned() -> None:
    r = vonage()
    samples = b"".join(i.to_bytes(2, "little", signed=True) for i in range(-700, 700))
    out = []
    pos = 0
    for size in [1, 3, 5, 639, 641, 7, 1, 1, 2, 333] * 3:
        out += r.push(samples[pos : pos + size])
        pos += size
    out += r.push(samples[pos:])
    assert b"".join(out) == samples[: len(out) * 640]
    assert all(len(f) == 640 for f in out)


def test_a_dangling_half_sample_is_dropped_on_flush() -> None:
    r = vonage()
    r.push(b"\x01\x02\x03")
    assert r.flush() == [b"\x01\x02" + bytes(638)]
    r.push(b"\x09")
    assert r.flush() == []


def test_hostile_sizes() -> None:
    r = twilio()
    assert r.push(b"") == []
    ones = [f for _ in range(480) for f in r.push(b"\x07")]
    assert ones == [b"\x07" * 160] * 3
    huge = bytes(range(256)) * 40_000  # ~10 MB in one push
    frames = r.push(huge)
    assert len(frames) == len(huge) // 160 and r.pending == len(huge) % 160
    assert frames[-1] == huge[(len(frames) - 1) * 160 : len(frames) * 160]


@pytest.mark.parametrize(
    ("frame_bytes", "silence", "message"),
    [(0, b"\xff", "positive multiple"), (-160, b"\xff", "positive multiple"), (641, b"\x00\x00", "2-byte sample"), (160, b"", "silence")],
)
def test_bad_configuration_is_named(frame_bytes, silence, message) -> None:
    with pytest.raises(ValueError, match=message):
        Reframer(frame_bytes, silence)


@settings(max_examples=60, deadline=None)
@given(
    frame=st.sampled_from([(160, b"\xff"), (640, b"\x00\x00"), (3, b"\x00")]),
    chunks=st.lists(st.binary(max_size=1500), max_size=30),
)
def test_output_is_the_input_cut_into_frames(frame, chunks) -> None:
    size, silence = frame
    r = Reframer(size, silence)
    out = [f for chunk in chunks for f in r.push(chunk)]
    data = b"".join(chunks)
    assert all(len(f) == size for f in out)
    assert b"".join(out) == data[: len(out) * size]
    rest = len(data) % size
    assert r.pending == rest
    whole_samples = rest - rest % len(silence)
    tail = r.flush()
    if whole_samples:
        pad = (size - whole_samples) // len(silence)
        assert tail == [data[len(data) - rest :][:whole_samples] + silence * pad]
    else:
        assert tail == []
