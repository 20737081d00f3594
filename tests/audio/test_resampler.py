"""StreamingResampler: golden signals for every rate pair, chunking invariance, counts, spectra.

Tolerance between differently chunked runs is 1 LSB. Each output is the same float32 dot
product whichever way the input was cut, but BLAS may order a row's sum differently for a
different matrix shape (or thread count). Two orders differ by a few float32 ulps of the partial
sums, i.e. thousandths of an LSB, so only a value sitting that close to a rounding boundary can
come out differently, and only by one step: well under 1 % of samples (the tests bound it at 1 %;
measured 0.01-0.1 %). The same argument bounds the float64 textbook comparison.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.audio import SUPPORTED_RATES, StreamingResampler, polyphase_bank
from gateway.audio.filters import PASSBAND, STOPBAND_DB

PAIRS = [(a, b) for a in SUPPORTED_RATES for b in SUPPORTED_RATES if a != b]
UP = [(a, b) for a, b in PAIRS if b > a]
DOWN = [(a, b) for a, b in PAIRS if b < a]
AMPLITUDE = 0.5 * 32767
FLIP_RATE = 0.01  # see the module docstring


def pair_id(pair: tuple[int, int]) -> str:
    return f"{pair[0] // 1000}k-{pair[1] // 1000}k"


def speech_like(rate: int, seconds: float, seed: int = 1) -> np.ndarray:
    """Gliding harmonics with a syllable envelope and a little noise: broadband, speech-shaped."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(140 + 50 * np.sin(2 * np.pi * 0.9 * t)) / rate
    x = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in range(1, 60) if k * 190 < 0.48 * rate)
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 3.3 * t) ** 2) + 0.05 * rng.standard_normal(t.size)
    return np.round(x / np.abs(x).max() * 0.8 * 32767).astype(np.int16)


def tone(freq: float, rate: int, seconds: float, amplitude: float = AMPLITUDE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def seconds_for(dst: int, n: int = 8192) -> float:
    """Input duration giving ``n`` steady-state output samples after the start-up skip."""
    return (dst // 8 + n) / dst + 0.05


def whole(src: int, dst: int, x: np.ndarray) -> np.ndarray:
    r = StreamingResampler(src, dst)
    return np.concatenate([r.process(x), r.flush()])


def chunked(r: StreamingResampler, x: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return np.concatenate([r.process(part) for part in np.split(x, cuts)] + [r.flush()])


def frames(x: np.ndarray, n: int) -> np.ndarray:
    return np.arange(n, x.size, n)


def spectrum(y: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Blackman-Harris amplitude spectrum: a sine of amplitude A reads A (sidelobes < -92 dB)."""
    k = np.arange(y.size) / y.size
    w = 0.35875 - 0.48829 * np.cos(2 * np.pi * k) + 0.14128 * np.cos(4 * np.pi * k) - 0.01168 * np.cos(6 * np.pi * k)
    return np.fft.rfftfreq(y.size, 1 / rate), np.abs(np.fft.rfft(y * w)) * 2 / w.sum()


def steady(y: np.ndarray, rate: int, n: int = 8192) -> np.ndarray:
    """A stretch of output well past the filter's start-up transient."""
    start = rate // 8
    assert y.size >= start + n
    return y[start : start + n].astype(np.float64)


def db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-12))


def textbook(src: int, dst: int, x: np.ndarray) -> np.ndarray:
    """Float64 reference from the definition: zero-stuff by L, convolve with h, keep every M-th."""
    bank = polyphase_bank(src, dst)
    stuffed = np.zeros(x.size * bank.up)
    stuffed[:: bank.up] = x
    v = np.convolve(stuffed, bank.taps)[:: bank.down]
    n = -(-x.size * bank.up // bank.down) + bank.delay
    return np.rint(np.clip(v[:n], -32768, 32767)).astype(np.int16)


# --- equivalence ---------------------------------------------------------------------------


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_matches_the_textbook_definition(pair) -> None:
    src, dst = pair
    x = speech_like(src, 0.5)
    y = whole(src, dst, x)
    ref = textbook(src, dst, x)
    assert y.size == ref.size
    diff = np.abs(y.astype(np.int32) - ref)
    assert diff.max() <= 1 and np.mean(diff != 0) < FLIP_RATE


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_20ms_frames_and_random_chunks_match_whole(pair) -> None:
    src, dst = pair
    x = speech_like(src, 2.0)
    reference = whole(src, dst, x)
    rng = np.random.default_rng(src + dst)
    sizes = rng.choice([0, 1, 2, 3, 7, 50, 159, 160, 161, 479, 960, 5000], size=400)
    cuts = np.cumsum(sizes)
    r = StreamingResampler(src, dst)
    for y in (chunked(r, x, frames(x, src // 50)), chunked(r, x, cuts[cuts < x.size])):
        assert y.size == reference.size
        diff = np.abs(y.astype(np.int32) - reference)
        assert diff.max() <= 1
        assert np.mean(diff != 0) < FLIP_RATE


def test_bytes_api_matches_array_api() -> None:
    x = speech_like(16000, 0.3)
    a, b = StreamingResampler(16000, 24000), StreamingResampler(16000, 24000)
    out = b"".join(b.process_bytes(x[i : i + 320].tobytes()) for i in range(0, x.size, 320)) + b.flush_bytes()
    ref = np.concatenate([a.process(x[i : i + 320]) for i in range(0, x.size, 320)] + [a.flush()])
    assert out == ref.astype("<i2").tobytes()


def test_one_huge_call_matches_frames() -> None:
    """A minute at 48 kHz in one call runs through bounded scratch and agrees with 20 ms frames."""
    rng = np.random.default_rng(5)
    x = np.repeat(rng.normal(0, 6000, 48000 * 60 // 64), 64).clip(-32768, 32767).astype(np.int16)
    r = StreamingResampler(48000, 8000)
    big = np.concatenate([r.process(x), r.flush()])
    framed = chunked(r, x, frames(x, 960))
    assert big.size == framed.size == 8000 * 60 + r.delay
    assert np.abs(big.astype(np.int32) - framed).max() <= 1


# --- counts, drift, flush, reset ------------------------------------------------------------


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_every_20ms_frame_gives_exactly_20ms_for_a_minute(pair) -> None:
    src, dst = pair
    r = StreamingResampler(src, dst)
    frame = speech_like(src, 0.02)
    sizes = {r.process(frame).size for _ in range(3000)}
    assert sizes == {dst // 50}
    # Nothing is left over after a frame: the stream's state is the same after every frame,
    # which is why the count cannot drift however long the call runs.
    assert r._stream.pending_samples == 0  # noqa: SLF001


@pytest.mark.parametrize("pair", [(8000, 16000), (16000, 8000)], ids=pair_id)
def test_an_hour_of_provider_frames_has_no_drift(pair) -> None:
    src, dst = pair
    r = StreamingResampler(src, dst)
    frame = speech_like(src, 0.02).tobytes()
    expected = dst // 50 * 2
    process = r.process_bytes
    total = 0
    short = 0
    for _ in range(180_000):  # 60 min x 60 s x 50 frames
        n = len(process(frame))
        total += n
        short += n != expected
    assert short == 0
    assert total == 3600 * dst * 2


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_flush_returns_the_delayed_tail(pair) -> None:
    src, dst = pair
    r = StreamingResampler(src, dst)
    signal = speech_like(src, 1.0)
    for n_in in (1, 13, src // 50, 12345):
        x = np.resize(signal, n_in)
        y = np.concatenate([r.process(x), r.flush()])
        assert y.size == -(-n_in * dst // src) + r.delay


def test_flush_leaves_a_fresh_resampler_and_is_empty_without_input() -> None:
    r = StreamingResampler(8000, 16000)
    assert r.flush().size == 0
    x = speech_like(8000, 0.25)
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(first, second)
    assert r.flush().size == 0


@pytest.mark.parametrize("pair", [(8000, 16000), (24000, 16000), (48000, 8000)], ids=pair_id)
def test_reset_forgets_everything(pair) -> None:
    src, dst = pair
    x = speech_like(src, 0.3)
    r = StreamingResampler(src, dst)
    r.process(speech_like(src, 0.137, seed=9))  # history plus a partial block
    r.reset()
    after_reset = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(after_reset, whole(src, dst, x))


def test_delay_is_whole_samples_and_phase_is_linear() -> None:
    """A passband sine comes out shifted by exactly ``delay`` output samples."""
    for src, dst in PAIRS:
        r = StreamingResampler(src, dst)
        f = 0.3 * min(src, dst) / 2
        y = np.concatenate([r.process(tone(f, src, 0.6)), r.flush()]).astype(np.float64)
        n = np.arange(dst // 10, dst // 10 + dst // 4)
        t = (n - r.delay) / dst
        basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)
        (a, b), *_ = np.linalg.lstsq(basis, y[n], rcond=None)
        assert abs(math.atan2(b, a)) < 1e-3, (src, dst)


# --- frequency domain ----------------------------------------------------------------------


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_designed_response_meets_the_spec_at_every_frequency(pair) -> None:
    src, dst = pair
    bank = polyphase_bank(src, dst)
    proto = bank.taps.astype(np.float32).astype(np.float64)  # the float32 taps the bank uses
    nfft = 1 << 17
    response = np.abs(np.fft.rfft(proto, nfft)) / bank.up
    freqs = np.fft.rfftfreq(nfft, 1 / (bank.up * src))
    nyquist = min(src, dst) / 2
    assert -db(response[freqs >= nyquist].max()) >= STOPBAND_DB
    passband = response[freqs <= PASSBAND * nyquist]
    assert max(abs(db(passband.max())), abs(db(passband.min()))) < 0.01


@pytest.mark.parametrize("pair", UP, ids=pair_id)
def test_upsampling_images_are_60db_down(pair) -> None:
    """E.g. 8k -> 16k: tones up to 3.9 kHz leave nothing above 4.1 kHz within 60 dB."""
    src, dst = pair
    band_start = 1.025 * src / 2
    for fraction in (0.1, 0.5, 0.85, 0.95, 0.975):
        y = whole(src, dst, tone(fraction * src / 2, src, seconds_for(dst)))
        freqs, amp = spectrum(steady(y, dst), dst)
        rejection = -db(amp[freqs >= band_start].max() / AMPLITUDE)
        assert rejection >= 60, (fraction, rejection)


@pytest.mark.parametrize("pair", DOWN, ids=pair_id)
def test_downsampling_aliases_are_60db_down(pair) -> None:
    """E.g. 16k -> 8k: a 5 kHz tone (and anything from 4.1 kHz up) leaves < -60 dB behind."""
    src, dst = pair
    tones = [1.025 * dst / 2, 1.25 * dst / 2, *np.linspace(1.6 * dst / 2, 0.99 * src / 2, 4)]
    if (src, dst) == (16000, 8000):
        tones.append(5000.0)
    for f in tones:
        y = whole(src, dst, tone(f, src, seconds_for(dst)))
        _, amp = spectrum(steady(y, dst), dst)
        rejection = -db(amp.max() / AMPLITUDE)
        assert rejection >= 60, (f, rejection)


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_passband_is_flat(pair) -> None:
    src, dst = pair
    nyquist = min(src, dst) / 2
    for fraction in (0.02, 0.25, 0.5, 0.75, PASSBAND):
        f = fraction * nyquist
        y = steady(whole(src, dst, tone(f, src, seconds_for(dst))), dst)
        t = np.arange(y.size) / dst
        basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)
        (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
        assert abs(db(math.hypot(a, b) / AMPLITUDE)) < 0.02, fraction


def frame_rate_energy_db(y: np.ndarray, src: int, dst: int, f: float) -> float:
    """Loudest frame-rate product relative to the tone: 50 Hz harmonics, and the tone's 50 Hz
    sidebands (a per-frame glitch modulates the signal, so it lands at f +- k*50 Hz). Lines that
    are legitimately there (the tone, its images and aliases) are skipped."""
    n = 1 << 15
    freqs, amp = spectrum(steady(y, dst, n), dst)
    lines = [abs(m * src + s * f) for m in range(-8, 9) for s in (-1, 1)]
    worst = 0.0
    for k in range(1, int(dst / 2 / 50)):
        for target in (50 * k, f + 50 * k, abs(f - 50 * k)):
            if target < dst / 2 and min(abs(target - line) for line in lines) >= 25:
                worst = max(worst, float(amp[np.abs(freqs - target) < 2].max()))
    return db(worst / AMPLITUDE)


@pytest.mark.parametrize("pair", [(8000, 16000), (16000, 8000), (8000, 24000), (24000, 16000)], ids=pair_id)
def test_no_energy_at_the_frame_rate_after_chunked_processing(pair) -> None:
    src, dst = pair
    f = 1037.0  # not a multiple of 50 Hz
    x = tone(f, src, seconds_for(dst, 1 << 15))
    r = StreamingResampler(src, dst)
    y = chunked(r, x, frames(x, src // 50))
    assert frame_rate_energy_db(y, src, dst, f) < -90


def test_frame_rate_check_does_catch_per_frame_discontinuities() -> None:
    """Control: resetting the filter every frame (the bug the previous test guards) is caught."""
    src, dst, f = 8000, 16000, 1037.0
    x = tone(f, src, seconds_for(dst, 1 << 15))
    r = StreamingResampler(src, dst)
    parts = []
    for part in np.split(x, frames(x, 160)):
        parts.append(r.process(part))
        r.reset()
    assert frame_rate_energy_db(np.concatenate(parts), src, dst, f) > -40


def test_saturates_instead_of_wrapping() -> None:
    """A full-scale square wave overshoots after filtering; peaks clip at the int16 limits."""
    x = np.where(np.sin(2 * np.pi * 300 * np.arange(8000) / 8000) >= 0, 32767, -32768).astype(np.int16)
    y = whole(8000, 16000, x)
    assert y.max() == 32767 and y.min() == -32768
    assert np.abs(y.astype(np.int32) - textbook(8000, 16000, x)).max() <= 1


# --- edges and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_equal_rates_pass_samples_through(rate) -> None:
    r = StreamingResampler(rate, rate)
    x = speech_like(rate, 0.02)
    assert r.passthrough and r.delay == 0
    assert r.process(x) is x
    assert r.process_bytes(x.tobytes()) == x.tobytes()
    assert r.flush().size == 0 and r.flush_bytes() == b""


def test_empty_and_single_sample_input() -> None:
    r = StreamingResampler(8000, 16000)
    assert r.process(np.empty(0, np.int16)).size == 0
    assert r.process_bytes(b"") == b""
    x = speech_like(8000, 0.1)
    one_by_one = np.concatenate([r.process(x[i : i + 1]) for i in range(x.size)] + [r.flush()])
    assert np.abs(one_by_one.astype(np.int32) - whole(8000, 16000, x)).max() <= 1


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="src_rate.*44100"):
        StreamingResampler(44100, 16000)
    with pytest.raises(ValueError, match="dst_rate.*11025"):
        StreamingResampler(8000, 11025)
    r = StreamingResampler(8000, 16000)
    with pytest.raises(TypeError, match="int16"):
        r.process(np.zeros(160, np.float32))
    with pytest.raises(TypeError, match="int16"):
        r.process(np.zeros((2, 160), np.int16))
    with pytest.raises(ValueError, match="even number of bytes, got 321"):
        r.process_bytes(bytes(321))


def test_irregular_chunking_does_not_grow_scratch_memory() -> None:
    r = StreamingResampler(8000, 16000)
    x = speech_like(8000, 2.0)
    rng = np.random.default_rng(4)
    r.process(x[:5])
    for size in rng.integers(1, 900, 200):
        r.process(x[:size])
    assert len(r._stream._frames) <= 4  # noqa: SLF001
