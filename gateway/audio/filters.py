"""Anti-aliasing / anti-imaging filter design for rational resampling, as a block polyphase bank.

Resampling by L/M (L, M coprime) is: upsample by L (zero-stuff), low-pass at the lower of the two
Nyquist frequencies, keep every M-th sample. Output ``n`` is ``y[n] = sum_i x[i] h[n*M - i*L]``.

The low-pass ``h`` is a Kaiser-windowed sinc at the prototype rate ``L * src``:

* passband 0 .. ``PASSBAND`` x Nyquist flat (ripple well under 0.01 dB);
* stopband from Nyquist up, at least ``STOPBAND_DB`` down (verified numerically at design time,
  on the float32 taps actually used, and re-measured by the tests with tones);
* each of the L polyphase branches is scaled to sum to exactly 1, so DC passes unchanged and a
  constant input produces no images;
* an odd length ``2*L*M*k + 1``, so the group delay is a whole number of samples at both rates.

For speed the bank is laid out for *blocks*: ``C`` input samples (a multiple of M that divides a
10 ms frame) always make exactly ``P = C*L/M`` outputs, and those outputs are one vector-matrix
product of the window ``x[qC - W : qC + C]`` (``S = W + C`` samples, ``W`` of history) with a
fixed ``S x P`` matrix. A frame of Q blocks is then a single ``(Q, S) @ (S, P)`` BLAS call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

SUPPORTED_RATES: tuple[int, ...] = (8000, 16000, 24000, 48000)
"""Sample rates the resampler is designed and tested for."""

PASSBAND = 0.85
"""Passband edge as a fraction of the lower Nyquist (3.4 kHz for 8 kHz telephony)."""
STOPBAND_DB = 60.0
"""Guaranteed stopband rejection at and above the lower Nyquist."""
MAX_PEAK_GAIN = 4.0
"""Bound on sum |coefficients| per output, so |output| < 4 x full scale (see codec.WIDE_RANGE)."""
_DESIGN_MARGIN_DB = 1.5
_TARGET_BLOCK_SPAN = 60  # inputs + outputs per block: window duplication vs matrix waste (bench-tuned)


@dataclass(frozen=True, eq=False)
class PolyphaseBank:
    """A designed L/M resampling filter, laid out as a block matrix (see module docstring)."""

    src_rate: int
    dst_rate: int
    up: int  # L
    down: int  # M
    taps: np.ndarray  # float64 prototype at rate L*src, DC gain L
    history: int  # W: input samples of history each block window needs
    block_in: int  # C: input samples per block
    block_out: int  # P: output samples per block
    matrix: np.ndarray  # float32 (W + C, P), C-contiguous, read-only
    delay: int  # group delay in output samples
    stopband_db: float  # measured minimum rejection at and above the lower Nyquist
    peak_gain: float  # max over outputs of sum |coefficients|: bounds overshoot on full scale

    @property
    def window(self) -> int:
        """S: input samples in one block's window."""
        return self.history + self.block_in


def kaiser_lowpass(num_taps: int, cutoff: float, beta: float) -> np.ndarray:
    """Windowed-sinc low-pass; ``cutoff`` in cycles per sample (0..0.5), unit DC gain (approx.)."""
    n = np.arange(num_taps) - (num_taps - 1) / 2
    taps: np.ndarray = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(num_taps, beta)
    return taps


def stopband_rejection_db(taps: np.ndarray, edge: float, gain: float) -> float:
    """Minimum attenuation (dB, relative to ``gain``) of ``taps`` from ``edge`` (cycles/sample) to 0.5."""
    nfft = 1 << max(16, math.ceil(math.log2(len(taps) * 64)))
    mag = np.abs(np.fft.rfft(taps, nfft))
    freqs = np.arange(mag.size) / nfft
    worst = float(mag[freqs >= edge].max())
    return -20 * math.log10(max(worst, 1e-300) / gain)


def _normalise_branches(taps: np.ndarray, up: int) -> np.ndarray:
    taps = taps.copy()
    for r in range(up):
        taps[r::up] /= taps[r::up].sum()
    return taps


def _design_taps(up: int, down: int, src_rate: int, dst_rate: int) -> tuple[np.ndarray, float]:
    proto_rate = up * src_rate
    nyquist = min(src_rate, dst_rate) / 2 / proto_rate  # cycles per prototype sample
    passband = PASSBAND * nyquist
    cutoff = (passband + nyquist) / 2
    target = STOPBAND_DB + _DESIGN_MARGIN_DB
    beta = 0.1102 * (target - 8.7)
    estimate = (target - 7.95) / (2.285 * 2 * math.pi * (nyquist - passband)) + 1
    step = 2 * up * down
    k = max(1, math.ceil((estimate - 1) / step))
    while True:
        taps = _normalise_branches(kaiser_lowpass(k * step + 1, cutoff, beta) * up, up)
        rejection = stopband_rejection_db(taps.astype(np.float32).astype(np.float64), nyquist, up)
        if rejection >= STOPBAND_DB + 0.5:
            return taps, rejection
        k += 1


def _block_size(up: int, down: int, src_rate: int) -> int:
    """Input samples per block: a multiple of M dividing 10 ms, inputs + outputs near 60.

    Small blocks duplicate more input into the window matrix; large ones multiply more zeros
    in the banded matrix. Measured per 20 ms frame, the optimum is flat around 60.
    """
    ten_ms = src_rate // 100
    candidates = [c for c in range(down, ten_ms + 1, down) if ten_ms % c == 0]
    return min(candidates, key=lambda c: (abs(c + c * up // down - _TARGET_BLOCK_SPAN), -c))


@cache
def polyphase_bank(src_rate: int, dst_rate: int) -> PolyphaseBank:
    """Design (once per rate pair, then cached) the block polyphase bank for src -> dst."""
    for name, rate in (("src_rate", src_rate), ("dst_rate", dst_rate)):
        if rate not in SUPPORTED_RATES:
            raise ValueError(f"{name} must be one of {SUPPORTED_RATES}, got {rate!r}")
    if src_rate == dst_rate:
        raise ValueError("no filter is needed between equal rates")
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    taps, rejection = _design_taps(up, down, src_rate, dst_rate)
    n = taps.size
    history = (n - 1) // up
    block_in = _block_size(up, down, src_rate)
    block_out = block_in * up // down
    s = np.arange(history + block_in)[:, None]
    p = np.arange(block_out)[None, :]
    idx = p * down + (history - s) * up
    valid = (idx >= 0) & (idx < n)
    matrix = np.where(valid, taps[np.clip(idx, 0, n - 1)], 0.0).astype(np.float32)
    matrix.flags.writeable = False
    taps.flags.writeable = False
    peak_gain = float(np.abs(matrix).astype(np.float64).sum(axis=0).max())
    if peak_gain >= MAX_PEAK_GAIN:
        raise AssertionError(f"{src_rate}->{dst_rate}: peak gain {peak_gain:.3f} exceeds {MAX_PEAK_GAIN}")
    return PolyphaseBank(
        src_rate=src_rate,
        dst_rate=dst_rate,
        up=up,
        down=down,
        taps=taps,
        history=history,
        block_in=block_in,
        block_out=block_out,
        matrix=matrix,
        delay=(n - 1) // (2 * down),
        stopband_db=rejection,
        peak_gain=peak_gain,
    )
