"""AudioFormat and Transcoder: provider legs, exactness of the fused paths, round trips, bad input."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audio import (
    TWILIO_FORMAT,
    VONAGE_FORMAT,
    AudioFormat,
    StreamingResampler,
    Transcoder,
    decoder_for,
    encoder_for,
    polyphase_bank,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

MULAW_8K = TWILIO_FORMAT
ALAW_8K = AudioFormat("alaw", 8000)
PCM_8K = AudioFormat("pcm16", 8000)
PCM_16K = VONAGE_FORMAT
PCM_24K = AudioFormat("pcm16", 24000)
PCM_48K = AudioFormat("pcm16", 48000)
MULAW_16K = AudioFormat("mulaw", 16000)
FORMATS = [MULAW_8K, ALAW_8K, PCM_8K, PCM_16K, PCM_24K, PCM_48K, MULAW_16K]
CONVERSIONS = [(a, b) for a in FORMATS for b in FORMATS if a != b]


def fmt_id(value: object) -> str:
    return str(value)


def speech_like(rate: int, seconds: float, seed: int = 2, top: float = 0.45) -> np.ndarray:
    """Gliding harmonics up to ``top`` x rate, syllable envelope, a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(130 + 40 * np.sin(2 * np.pi * 1.1 * t)) / rate
    x = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in range(1, 80) if k * 170 < top * rate)
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) ** 2) + 0.02 * rng.standard_normal(t.size)
    return np.round(x / np.abs(x).max() * 0.7 * 32767).astype(np.int16)


def wire(fmt: AudioFormat, samples: np.ndarray) -> bytes:
    return encoder_for(fmt.encoding).encode(samples)


def linear(fmt: AudioFormat, data: bytes) -> np.ndarray:
    return decoder_for(fmt.encoding).decode(data).astype(np.int32)


def run_frames(tr: Transcoder, data: bytes, size: int) -> bytes:
    return b"".join(tr.process(data[i : i + size]) for i in range(0, len(data), size)) + tr.flush()


# --- AudioFormat ---------------------------------------------------------------------------


def test_provider_formats() -> None:
    assert TWILIO_FORMAT == AudioFormat("mulaw", 8000)
    assert VONAGE_FORMAT == AudioFormat("pcm16", 16000)
    assert TWILIO_FORMAT.frame_bytes() == 160 and VONAGE_FORMAT.frame_bytes() == 640
    assert TWILIO_FORMAT.bytes_per_sample == 1 and VONAGE_FORMAT.bytes_per_sample == 2
    assert TWILIO_FORMAT.silence == b"\xff" and VONAGE_FORMAT.silence == b"\x00\x00"
    assert ALAW_8K.silence == b"\xd5"
    assert PCM_24K.frame_bytes(10) == 480 and MULAW_8K.frame_bytes(ms=40) == 320
    assert str(TWILIO_FORMAT) == "mulaw@8000"


def test_audio_format_is_a_frozen_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TWILIO_FORMAT.sample_rate = 16000  # type: ignore[misc]
    assert len({AudioFormat("mulaw", 8000), TWILIO_FORMAT}) == 1


def test_bad_formats_name_the_field() -> None:
    with pytest.raises(ValueError, match="encoding.*'opus'"):
        AudioFormat("opus", 8000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_rate.*44100"):
        AudioFormat("pcm16", 44100)
    with pytest.raises(ValueError, match="ms must be"):
        TWILIO_FORMAT.frame_bytes(0)


# --- provider legs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (MULAW_8K, PCM_16K),
        (PCM_16K, MULAW_8K),
        (MULAW_8K, PCM_24K),
        (PCM_24K, MULAW_8K),
        (MULAW_8K, PCM_8K),
        (PCM_8K, MULAW_8K),
        (PCM_16K, PCM_24K),
        (PCM_24K, PCM_16K),
        (PCM_16K, MULAW_8K),
        (ALAW_8K, PCM_16K),
    ],
    ids=fmt_id,
)
def test_every_20ms_frame_in_gives_one_20ms_frame_out(src, dst) -> None:
    tr = Transcoder(src, dst)
    data = wire(src, speech_like(src.sample_rate, 1.0))
    size = src.frame_bytes()
    sizes = {len(tr.process(data[i : i + size])) for i in range(0, len(data), size)}
    assert sizes == {dst.frame_bytes()}


@pytest.mark.parametrize(("src", "dst"), CONVERSIONS, ids=fmt_id)
def test_equals_decode_resample_encode(src, dst) -> None:
    """The fused path (decode in the gather; round, saturate, encode in one lookup) is exact."""
    data = wire(src, speech_like(src.sample_rate, 0.4))
    size = src.frame_bytes()
    out = run_frames(Transcoder(src, dst), data, size)
    resampler = StreamingResampler(src.sample_rate, dst.sample_rate)
    decoder, encoder = decoder_for(src.encoding), encoder_for(dst.encoding)
    parts = [resampler.process(decoder.decode(data[i : i + size])) for i in range(0, len(data), size)]
    expected = b"".join(encoder.encode(p) for p in parts) + encoder.encode(resampler.flush())
    if src.encoding != "alaw" or src.sample_rate == dst.sample_rate:
        assert out == expected
        return
    # A-law has no zero code: the transcoder's filter starts from, and pads with, A-law silence
    # (+8) where the int16 resampler uses 0. Only outputs whose window reaches outside the audio
    # differ, by a few LSB; everything in between is identical.
    assert len(out) == len(expected)
    bank = polyphase_bank(src.sample_rate, dst.sample_rate)
    edge = (bank.window * bank.up // bank.down + bank.block_out) * dst.bytes_per_sample
    assert out[edge:-edge] == expected[edge:-edge]
    assert np.abs(linear(dst, out) - linear(dst, expected)).max() <= 16


def test_same_rate_conversions_match_audioop() -> None:
    pcm = speech_like(8000, 0.3).tobytes()
    ulaw = audioop.lin2ulaw(pcm, 2)
    alaw = audioop.lin2alaw(pcm, 2)
    assert Transcoder(PCM_8K, MULAW_8K).process(pcm) == ulaw
    assert Transcoder(PCM_8K, ALAW_8K).process(pcm) == alaw
    assert Transcoder(MULAW_8K, PCM_8K).process(ulaw) == audioop.ulaw2lin(ulaw, 2)
    assert Transcoder(MULAW_8K, ALAW_8K).process(ulaw) == audioop.lin2alaw(audioop.ulaw2lin(ulaw, 2), 2)
    assert Transcoder(ALAW_8K, MULAW_8K).process(alaw) == audioop.lin2ulaw(audioop.alaw2lin(alaw, 2), 2)


def test_flush_completes_the_stream() -> None:
    tr = Transcoder(TWILIO_FORMAT, VONAGE_FORMAT)
    data = wire(TWILIO_FORMAT, speech_like(8000, 0.5))[:3999]
    out = tr.process(data) + tr.flush()
    assert len(out) == (3999 * 2 + tr.delay) * 2
    assert tr.flush() == b""


# --- round trips ---------------------------------------------------------------------------


def best_lag_correlation(a: np.ndarray, b: np.ndarray, expected_lag: int) -> tuple[int, float]:
    """Lag of b behind a that correlates best (searched around the expected one), and that correlation."""
    best = (0, -1.0)
    for lag in range(max(0, expected_lag - 8), expected_lag + 9):
        n = min(a.size, b.size - lag)
        c = float(np.corrcoef(a[:n], b[lag : lag + n])[0, 1])
        best = max(best, (lag, c), key=lambda item: item[1])
    return best


@pytest.mark.parametrize("middle", [PCM_16K, PCM_24K, PCM_48K], ids=fmt_id)
def test_twilio_round_trip_correlates(middle) -> None:
    """μ-law 8k -> PCM16 -> μ-law 8k: the delays add up to whole samples and the audio survives."""
    there, back = Transcoder(TWILIO_FORMAT, middle), Transcoder(middle, TWILIO_FORMAT)
    original = wire(TWILIO_FORMAT, speech_like(8000, 2.0))
    size = TWILIO_FORMAT.frame_bytes()
    returned = b"".join(back.process(there.process(original[i : i + size])) for i in range(0, len(original), size))
    expected_lag = there.delay * 8000 // middle.sample_rate + back.delay
    lag, correlation = best_lag_correlation(linear(TWILIO_FORMAT, original), linear(TWILIO_FORMAT, returned), expected_lag)
    assert lag == expected_lag
    assert correlation > 0.99


def test_vonage_round_trip_through_twilio_correlates_for_telephone_band_audio() -> None:
    there, back = Transcoder(VONAGE_FORMAT, TWILIO_FORMAT), Transcoder(TWILIO_FORMAT, VONAGE_FORMAT)
    original = speech_like(16000, 2.0, top=0.2)  # below 3.2 kHz: what survives an 8 kHz leg
    data = original.tobytes()
    returned = b"".join(back.process(there.process(data[i : i + 640])) for i in range(0, len(data), 640))
    expected_lag = there.delay * 2 + back.delay
    lag, correlation = best_lag_correlation(original.astype(np.int32), linear(VONAGE_FORMAT, returned), expected_lag)
    assert lag == expected_lag
    assert correlation > 0.99


# --- passthrough, reset, malformed input ----------------------------------------------------


@pytest.mark.parametrize("fmt", [TWILIO_FORMAT, VONAGE_FORMAT, ALAW_8K], ids=fmt_id)
def test_passthrough_returns_the_same_object(fmt) -> None:
    tr = Transcoder(fmt, fmt)
    assert tr.passthrough and tr.delay == 0
    for data in (bytes(range(161)), b"", bytearray(b"\x01\x02\x03"), memoryview(b"\x05" * 7)):
        assert tr.process(data) is data
    assert tr.flush() == b""
    tr.reset()
    assert not Transcoder(TWILIO_FORMAT, VONAGE_FORMAT).passthrough


@pytest.mark.parametrize(("src", "dst"), CONVERSIONS, ids=fmt_id)
def test_empty_input_and_fresh_flush(src, dst) -> None:
    tr = Transcoder(src, dst)
    assert tr.process(b"") == b""
    assert tr.flush() == b""


@pytest.mark.parametrize(("src", "dst"), [(PCM_16K, PCM_24K), (PCM_16K, PCM_8K), (PCM_24K, PCM_16K)], ids=fmt_id)
def test_odd_byte_pcm16_chunks_keep_sample_alignment(src, dst) -> None:
    data = wire(src, speech_like(src.sample_rate, 0.5))
    reference = run_frames(Transcoder(src, dst), data, src.frame_bytes())
    tr = Transcoder(src, dst)
    rng = np.random.default_rng(11)
    cuts = np.cumsum(rng.choice([1, 3, 5, 17, 639, 641, 1001], size=400))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]) if a < len(data)]
    assert any(len(p) % 2 for p in pieces)
    out = b"".join(tr.process(p) for p in pieces) + tr.flush()
    assert len(out) == len(reference)
    diff = np.abs(linear(dst, out) - linear(dst, reference))
    assert diff.max() <= 1  # a sample split across calls is rejoined, never shifted by a byte


def test_odd_byte_pcm16_to_mulaw_at_the_same_rate_is_exact() -> None:
    pcm = speech_like(8000, 0.2).tobytes()
    tr = Transcoder(PCM_8K, MULAW_8K)
    out = b"".join(tr.process(pcm[i : i + 7]) for i in range(0, len(pcm), 7))
    assert out == audioop.lin2ulaw(pcm, 2)


def test_a_dangling_byte_is_dropped_at_flush_and_reset() -> None:
    tr = Transcoder(PCM_8K, MULAW_8K)
    assert tr.process(b"\x01") == b""
    assert tr.flush() == b""
    assert tr.process(b"\x00\x00") == audioop.lin2ulaw(b"\x00\x00", 2)
    tr.process(b"\x01")
    tr.reset()
    assert tr.process(b"\x00\x00") == audioop.lin2ulaw(b"\x00\x00", 2)


def test_reset_gives_a_fresh_stream() -> None:
    data = wire(PCM_16K, speech_like(16000, 0.3))
    fresh = run_frames(Transcoder(PCM_16K, TWILIO_FORMAT), data, 640)
    tr = Transcoder(PCM_16K, TWILIO_FORMAT)
    tr.process(wire(PCM_16K, speech_like(16000, 0.1, seed=8)) + b"\x07")  # history, partial block, half sample
    tr.reset()
    assert run_frames(tr, data, 640) == fresh


def test_accepts_any_bytes_like_input() -> None:
    data = wire(TWILIO_FORMAT, speech_like(8000, 0.1))
    expected = Transcoder(TWILIO_FORMAT, VONAGE_FORMAT).process(data)
    assert Transcoder(TWILIO_FORMAT, VONAGE_FORMAT).process(bytearray(data)) == expected
    assert Transcoder(TWILIO_FORMAT, VONAGE_FORMAT).process(memoryview(data)) == expected


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=2000), min_size=1, max_size=40))
def test_any_chunking_of_vonage_audio_gives_the_same_twilio_stream(sizes) -> None:
    data = VONAGE_AUDIO
    cuts = np.cumsum(sizes)
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]) if a <= len(data)]
    tr = Transcoder(VONAGE_FORMAT, TWILIO_FORMAT)
    out = b"".join(tr.process(p) for p in pieces) + tr.flush()
    assert len(out) == len(VONAGE_TO_TWILIO)
    # Chunking changes BLAS shapes only, so at most a 1 LSB step before encoding: the μ-law
    # codes then differ by at most one quantization level, and very rarely.
    rank = np.argsort(np.argsort(linear(TWILIO_FORMAT, bytes(range(256))), kind="stable"), kind="stable")
    steps = np.abs(rank[np.frombuffer(out, np.uint8)] - rank[np.frombuffer(VONAGE_TO_TWILIO, np.uint8)])
    assert steps.max() <= 1 and np.mean(steps != 0) < 0.01


VONAGE_AUDIO = speech_like(16000, 0.5, seed=4).tobytes()
VONAGE_TO_TWILIO = run_frames(Transcoder(VONAGE_FORMAT, TWILIO_FORMAT), VONAGE_AUDIO, 640)
