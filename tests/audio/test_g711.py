"""G.711 tables and codec stages: bit-exact with audioop for every code and every PCM16 value."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gateway.audio import (
    AlawDecoder,
    AlawEncoder,
    MulawDecoder,
    MulawEncoder,
    Pcm16Decoder,
    Pcm16Encoder,
    decode_alaw,
    decode_mulaw,
    decoder_for,
    encode_alaw,
    encode_mulaw,
    encoder_for,
)
from gateway.audio import g711
from gateway.audio.codec import WIDE_RANGE

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_PCM16 = np.arange(1 << 16, dtype=np.uint16).view(np.int16)
ALL_PCM16_BYTES = ALL_PCM16.astype("<i2").tobytes()
ALL_CODES = bytes(range(256))


def test_mulaw_encode_matches_audioop_for_every_pcm16_value() -> None:
    assert encode_mulaw(ALL_PCM16_BYTES) == audioop.lin2ulaw(ALL_PCM16_BYTES, 2)


def test_alaw_encode_matches_audioop_for_every_pcm16_value() -> None:
    assert encode_alaw(ALL_PCM16_BYTES) == audioop.lin2alaw(ALL_PCM16_BYTES, 2)


def test_mulaw_decode_matches_audioop_for_every_code() -> None:
    assert decode_mulaw(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_decode_matches_audioop_for_every_code() -> None:
    assert decode_alaw(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


def test_law_to_law_translation_goes_through_the_linear_value() -> None:
    assert ALL_CODES.translate(g711.MULAW_TO_ALAW) == audioop.lin2alaw(audioop.ulaw2lin(ALL_CODES, 2), 2)
    assert ALL_CODES.translate(g711.ALAW_TO_MULAW) == audioop.lin2ulaw(audioop.alaw2lin(ALL_CODES, 2), 2)


def test_tables_are_read_only() -> None:
    for table in (g711.MULAW_TO_PCM16, g711.PCM16_TO_MULAW, g711.ALAW_TO_PCM16, g711.PCM16_TO_ALAW):
        with pytest.raises(ValueError):
            table[0] = 1


def test_silence_codes_decode_to_near_zero() -> None:
    assert decode_mulaw(b"\xff") == b"\x00\x00"
    assert abs(np.frombuffer(decode_alaw(b"\xd5"), "<i2")[0]) == 8


def test_empty_input_gives_empty_output() -> None:
    assert encode_mulaw(b"") == encode_alaw(b"") == decode_mulaw(b"") == decode_alaw(b"") == b""


@pytest.mark.parametrize("encode", [encode_mulaw, encode_alaw])
def test_odd_length_pcm16_is_rejected_with_a_clear_error(encode) -> None:
    with pytest.raises(ValueError, match="even number of bytes, got 3"):
        encode(b"\x00\x01\x02")


@pytest.mark.parametrize(
    ("decoder", "decode"),
    [(MulawDecoder(), audioop.ulaw2lin), (AlawDecoder(), audioop.alaw2lin)],
)
def test_decoder_stages_match_audioop(decoder, decode) -> None:
    samples = decoder.decode(ALL_CODES)
    assert samples.dtype == np.int16
    assert samples.astype("<i2").tobytes() == decode(ALL_CODES, 2)
    # The gather used by the resampler decodes a strided window view to float32.
    raw = ALL_CODES * 2
    windows = np.ndarray((16, 40), np.uint8, raw, 0, (16, 1))
    expected = np.frombuffer(decode(raw, 2), "<i2").astype(np.float32)
    expected = np.lib.stride_tricks.sliding_window_view(expected, 40)[::16][:16]
    np.testing.assert_array_equal(decoder.gather(windows), expected)


def test_pcm16_decoder_gathers_int16_windows() -> None:
    decoder = Pcm16Decoder()
    raw = ALL_PCM16_BYTES[:2000]
    windows = np.ndarray((10, 30), "<i2", raw, 0, (40, 2))
    expected = np.lib.stride_tricks.sliding_window_view(ALL_PCM16[:1000], 30)[::20][:10].astype(np.float32)
    np.testing.assert_array_equal(decoder.gather(windows), expected)
    np.testing.assert_array_equal(decoder.decode(raw), ALL_PCM16[:1000])


@pytest.mark.parametrize(
    ("encoder", "encode"),
    [(MulawEncoder(), audioop.lin2ulaw), (AlawEncoder(), audioop.lin2alaw), (Pcm16Encoder(), lambda b, w: b)],
)
def test_encoder_stages_match_audioop(encoder, encode) -> None:
    assert encoder.encode(ALL_PCM16) == encode(ALL_PCM16_BYTES, 2)


def _reference_quantize(y: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(y.astype(np.float64), -32768, 32767)).astype(np.int16)


@pytest.mark.parametrize(
    ("encoder", "encode"),
    [(MulawEncoder(), audioop.lin2ulaw), (AlawEncoder(), audioop.lin2alaw), (Pcm16Encoder(), lambda b, w: b)],
)
def test_quantize_rounds_saturates_then_encodes(encoder, encode) -> None:
    """The fused float path equals: round half to even, saturate to int16, encode."""
    rng = np.random.default_rng(3)
    limit = WIDE_RANGE - 1
    y = np.concatenate(
        [
            rng.uniform(-limit, limit, 20_000),  # well beyond full scale: filter overshoot
            rng.normal(0, 3000, 20_000),
            np.arange(-40, 40) + 0.5,  # exact halves
            [-32768.5, -32768.4, 32767.4, 32767.5, 32767.6, -limit, limit],
        ]
    ).astype(np.float32)
    expected = encode(_reference_quantize(y).astype("<i2").tobytes(), 2)
    assert encoder.quantize(y.reshape(-1, 1).copy()) == expected
    assert encoder.quantize(y.reshape(1, -1).copy()) == expected  # shape change reuses nothing stale


def test_pcm16_quantize_array_returns_fresh_int16() -> None:
    encoder = Pcm16Encoder()
    y = np.array([[1.5, -70000.0, 70000.0, -0.5]], dtype=np.float32)
    first = encoder.quantize_array(y.copy())
    second = encoder.quantize_array(np.zeros((1, 4), np.float32))
    np.testing.assert_array_equal(first, [[2, -32768, 32767, 0]])
    assert first.dtype == np.int16 and not np.shares_memory(first, second)


def test_factories_name_the_bad_encoding() -> None:
    assert isinstance(decoder_for("mulaw"), MulawDecoder)
    assert isinstance(encoder_for("alaw"), AlawEncoder)
    with pytest.raises(ValueError, match="'opus'"):
        decoder_for("opus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'g729'"):
        encoder_for("g729")  # type: ignore[arg-type]
