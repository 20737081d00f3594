"""The audio contract of the Transcoder on the gateway's real resampling legs, fed as the media
layer feeds it (20 ms frames, odd chunks, resets), with audioop and soxr as independent oracles:
G.711 bit-exact, >= 60 dB stopband, chunked = whole within 1 LSB, exact frame counts for as long
as a call lasts, reset mid-stream. Any faster kernel behind ``Transcoder.process`` must pass these.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import soxr

from audio.test_transcoder import speech_like  # broadband, speech-shaped, 0.7 of full scale
from gateway.audio import TWILIO_FORMAT, VONAGE_FORMAT, AudioFormat, StreamingResampler, Transcoder, polyphase_bank

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALAW_8K = AudioFormat("alaw", 8000)
PCM_8K = AudioFormat("pcm16", 8000)
PCM_24K = AudioFormat("pcm16", 24000)
AMPLITUDE = 0.5 * 32767
# The gateway's real resampling legs: Twilio <-> a 16 or 24 kHz agent, Vonage <-> a 24 kHz agent, A-law.
LEGS = [
    (TWILIO_FORMAT, VONAGE_FORMAT),
    (VONAGE_FORMAT, TWILIO_FORMAT),
    (TWILIO_FORMAT, PCM_24K),
    (PCM_24K, TWILIO_FORMAT),
    (VONAGE_FORMAT, PCM_24K),
    (PCM_24K, VONAGE_FORMAT),
    (ALAW_8K, VONAGE_FORMAT),
    (VONAGE_FORMAT, ALAW_8K),
]


def leg_id(value: object) -> str:
    return str(value)


def tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(AMPLITUDE * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def wire(fmt: AudioFormat, samples: np.ndarray) -> bytes:
    pcm = samples.astype("<i2").tobytes()
    return {"pcm16": pcm, "mulaw": audioop.lin2ulaw(pcm, 2), "alaw": audioop.lin2alaw(pcm, 2)}[fmt.encoding]


def to_pcm(fmt: AudioFormat, data: bytes) -> np.ndarray:
    """Wire bytes -> int32 samples, G.711 decoded by audioop."""
    pcm = {"pcm16": data, "mulaw": audioop.ulaw2lin(data, 2), "alaw": audioop.alaw2lin(data, 2)}[fmt.encoding]
    return np.frombuffer(pcm, "<i2").astype(np.int32)


def framed(tr: Transcoder, data: bytes, size: int) -> list[bytes]:
    return [tr.process(data[i : i + size]) for i in range(0, len(data), size)]


# --- G.711 is bit-exact through the fused decode and encode ---------------------------------


@pytest.mark.parametrize(("src", "dst"), [(VONAGE_FORMAT, TWILIO_FORMAT), (VONAGE_FORMAT, ALAW_8K), (PCM_24K, TWILIO_FORMAT)], ids=leg_id)
def test_g711_out_is_audioop_encoding_of_the_resampled_samples(src, dst) -> None:
    """Round, saturate and encode fused into one table lookup == audioop.lin2ulaw/lin2alaw."""
    x = speech_like(src.sample_rate, 1.0)
    x[1000:1400] = 32767  # full-scale plateaus: the filter overshoots past int16 and must saturate
    x[3000:3400] = -32768
    data = x.tobytes()
    size = src.frame_bytes()
    out = b"".join(framed(Transcoder(src, dst), data, size))
    resampler = StreamingResampler(src.sample_rate, dst.sample_rate)
    pcm = b"".join(resampler.process_bytes(data[i : i + size]) for i in range(0, len(data), size))
    samples = np.frombuffer(pcm, "<i2")
    assert samples.max() == 32767 and samples.min() == -32768  # saturation happened
    encode = audioop.lin2ulaw if dst.encoding == "mulaw" else audioop.lin2alaw
    assert out == encode(pcm, 2)


@pytest.mark.parametrize("src", [TWILIO_FORMAT, ALAW_8K], ids=leg_id)
def test_g711_in_is_audioop_decoding_then_resampling(src) -> None:
    """Decoding inside the window gather == audioop.ulaw2lin/alaw2lin, then the int16 resampler."""
    data = wire(src, speech_like(8000, 1.0))
    out = b"".join(framed(Transcoder(src, VONAGE_FORMAT), data, 160))
    decode = audioop.ulaw2lin if src.encoding == "mulaw" else audioop.alaw2lin
    pcm = decode(data, 2)
    resampler = StreamingResampler(8000, 16000)
    expected = b"".join(resampler.process_bytes(pcm[i : i + 320]) for i in range(0, len(pcm), 320))
    if src.encoding == "mulaw":  # μ-law silence (0xFF) decodes to 0: the histories agree exactly
        assert out == expected
        return
    # A-law has no zero code: the transcoder's history starts at A-law silence (+8), so only the
    # first filter length of output can differ, by less than 8 LSB times the filter's gain.
    edge = polyphase_bank(8000, 16000).taps.size
    a, b = np.frombuffer(out, "<i2").astype(np.int32), np.frombuffer(expected, "<i2").astype(np.int32)
    assert np.array_equal(a[edge:], b[edge:]) and np.abs(a - b).max() <= 20


# --- stopband on the framed path, soxr as the reference for what should pass ----------------


def amplitude_spectrum(y: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(y.size) / y.size
    w = 0.35875 - 0.48829 * np.cos(2 * np.pi * k) + 0.14128 * np.cos(4 * np.pi * k) - 0.01168 * np.cos(6 * np.pi * k)
    return np.fft.rfftfreq(y.size, 1 / rate), np.abs(np.fft.rfft(y * w)) * 2 / w.sum()


def framed_pcm(src: AudioFormat, dst: AudioFormat, x: np.ndarray) -> np.ndarray:
    tr = Transcoder(src, dst)
    data = x.tobytes()
    return np.frombuffer(b"".join(framed(tr, data, src.frame_bytes())) + tr.flush(), "<i2").astype(np.float64)


def middle(y: np.ndarray, rate: int, n: int = 8192) -> np.ndarray:
    return y[rate // 8 : rate // 8 + n]


@pytest.mark.parametrize(("src", "dst"), [(VONAGE_FORMAT, PCM_8K), (PCM_24K, PCM_8K), (PCM_24K, VONAGE_FORMAT)], ids=leg_id)
def test_framed_downsampling_aliases_are_60db_down(src, dst) -> None:
    for fraction in (1.03, 1.3, 1.7, 0.98 * src.sample_rate / dst.sample_rate):
        f = fraction * dst.sample_rate / 2
        y = framed_pcm(src, dst, tone(f, src.sample_rate, 0.8))
        _, amp = amplitude_spectrum(middle(y, dst.sample_rate), dst.sample_rate)
        assert -20 * math.log10(amp.max() / AMPLITUDE) >= 60, f


@pytest.mark.parametrize(("src", "dst"), [(PCM_8K, VONAGE_FORMAT), (PCM_8K, PCM_24K), (VONAGE_FORMAT, PCM_24K)], ids=leg_id)
def test_framed_upsampling_images_are_60db_down_and_the_passband_matches_soxr(src, dst) -> None:
    """Above the source Nyquist nothing within 60 dB; below it, what soxr VHQ makes of the tone."""
    delay = polyphase_bank(src.sample_rate, dst.sample_rate).delay
    for fraction in (0.1, 0.5, 0.85):
        f = fraction * src.sample_rate / 2
        x = tone(f, src.sample_rate, 0.8)
        y = framed_pcm(src, dst, x)
        freqs, amp = amplitude_spectrum(middle(y, dst.sample_rate), dst.sample_rate)
        assert -20 * math.log10(amp[freqs >= 1.025 * src.sample_rate / 2].max() / AMPLITUDE) >= 60, f
        reference = soxr.resample(x.astype(np.float64), src.sample_rate, dst.sample_rate, quality="VHQ")
        ours = middle(y[delay:], dst.sample_rate)
        error = ours - middle(reference, dst.sample_rate)
        assert 20 * math.log10(AMPLITUDE / np.sqrt(2) / error.std()) > 50, f  # same tone, same phase


# --- chunking, counts, reset -----------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), LEGS, ids=leg_id)
def test_frames_and_odd_chunks_match_one_whole_call_within_1_lsb(src, dst) -> None:
    data = wire(src, speech_like(src.sample_rate, 1.5))
    whole = Transcoder(src, dst)
    reference = to_pcm(dst, whole.process(data) + whole.flush())
    frame = src.frame_bytes()
    block = polyphase_bank(src.sample_rate, dst.sample_rate).block_in * src.bytes_per_sample
    rng = np.random.default_rng(7)
    # 20 ms frames, whole blocks smaller than the filter history, chunks bigger than the stream's
    # buffer, and misaligned ones (odd bytes for PCM16) that leave a partial block or half a sample.
    sizes = [frame] * 20 + list(rng.choice([block, 2 * block, frame, 3 * frame, 25 * frame, 1, 3, frame - 1, frame + 1], 300))
    cuts = np.cumsum(sizes)
    tr = Transcoder(src, dst)
    out = b"".join(tr.process(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)]) if a < len(data)) + tr.flush()
    chunked = to_pcm(dst, out)
    assert chunked.size == reference.size
    if dst.encoding == "pcm16":
        assert np.abs(chunked - reference).max() <= 1
    else:  # a 1 LSB step before encoding moves a G.711 code by at most one level
        levels = np.unique(to_pcm(dst, bytes(range(256))))
        rank = np.searchsorted(levels, chunked) - np.searchsorted(levels, reference)
        assert np.abs(rank).max() <= 1


@pytest.mark.parametrize(("src", "dst"), [(TWILIO_FORMAT, VONAGE_FORMAT), (VONAGE_FORMAT, TWILIO_FORMAT), (VONAGE_FORMAT, PCM_24K)], ids=leg_id)
def test_ten_minutes_of_frames_give_exactly_ten_minutes_and_the_exact_tail(src, dst) -> None:
    tr = Transcoder(src, dst)
    frames = [wire(src, part) for part in np.split(speech_like(src.sample_rate, 1.0), 50)]
    expected = dst.frame_bytes()
    wrong = total = 0
    for n in range(30_000):  # 10 min x 60 s x 50 frames
        size = len(tr.process(frames[n % 50]))
        total += size
        wrong += size != expected
    assert wrong == 0 and total == 600 * dst.sample_rate * dst.bytes_per_sample
    assert len(tr.flush()) == tr.delay * dst.bytes_per_sample


@pytest.mark.parametrize(("src", "dst"), LEGS, ids=leg_id)
def test_reset_mid_stream_gives_a_fresh_stream(src, dst) -> None:
    data = wire(src, speech_like(src.sample_rate, 0.5))
    size = src.frame_bytes()
    fresh = Transcoder(src, dst)
    expected = b"".join(framed(fresh, data, size)) + fresh.flush()
    tr = Transcoder(src, dst)
    noise = wire(src, speech_like(src.sample_rate, 0.2, seed=11))
    for pending in (b"", noise[: src.bytes_per_sample * 3 + 1]):  # aligned, then with a partial block and half a sample
        framed(tr, noise, size)
        tr.process(pending)
        tr.reset()
        assert b"".join(framed(tr, data, size)) + tr.flush() == expected


def test_returned_frames_are_independent_of_the_reused_buffers() -> None:
    tr = Transcoder(VONAGE_FORMAT, PCM_24K)
    data = wire(VONAGE_FORMAT, speech_like(16000, 0.2))
    first = tr.process(data[:640])
    kept = bytes(first)
    tr.process(data[640:1280])
    assert first == kept and isinstance(first, bytes)
