"""Per-encoding decode and encode stages that sit either side of the resampler.

A decoder turns wire bytes into samples two ways: ``decode`` gives int16 samples (no resampling
needed); ``gather`` (a C-level callable) fills the resampler's float32 window matrix straight from
a strided view of the raw wire samples, so G.711 decoding costs nothing beyond the gather the
filter does anyway.
An encoder is the mirror: ``encode`` takes int16 samples, ``quantize`` takes the filter's float
output and rounds, saturates to int16 and encodes, in as few vector passes as possible.

Every path yields exactly what "round and saturate to int16, then encode" would; the tests hold
the fused paths to that.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache, partial
from typing import Literal

import numpy as np

from . import g711
from .filters import MAX_PEAK_GAIN

Encoding = Literal["pcm16", "mulaw", "alaw"]
ENCODINGS: tuple[str, ...] = ("pcm16", "mulaw", "alaw")

_PCM16 = np.dtype("<i2")
# 0-d arrays, not scalars: a ufunc converts a Python/NumPy scalar on every call, which costs
# more than clipping a 20 ms frame.
_INT16_MIN = np.array(-32768.0, dtype=np.float32)
_INT16_MAX = np.array(32767.0, dtype=np.float32)


def _clip_ufunc() -> Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], object]:
    """The ``clip`` ufunc that ``np.clip`` wraps (about 5x cheaper per call on a 20 ms frame)."""
    for module in ("numpy._core.umath", "numpy.core.umath"):
        try:
            ufunc = importlib.import_module(module).clip
        except (ImportError, AttributeError):
            continue
        if isinstance(ufunc, np.ufunc):
            return ufunc

    def clip(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: np.ndarray) -> np.ndarray:
        result: np.ndarray = np.minimum(np.maximum(y, lo, out), hi, out)
        return result

    return clip


_clip = _clip_ufunc()
_rint = np.rint

# Wide encode tables take the *unsaturated* rounded filter output (|y| < MAX_PEAK_GAIN x full
# scale, which every PolyphaseBank guarantees) and saturate as part of the lookup: negative
# indices wrap to the upper half, so one ``take`` replaces clip + encode.
WIDE_RANGE = int(MAX_PEAK_GAIN * 32768)


@cache
def _wide_table(law: str) -> np.ndarray:
    table = {"mulaw": g711.PCM16_TO_MULAW, "alaw": g711.PCM16_TO_ALAW}[law]
    value = np.arange(2 * WIDE_RANGE, dtype=np.int64)
    value = np.where(value >= WIDE_RANGE, value - 2 * WIDE_RANGE, value)
    saturated = np.clip(value, -32768, 32767).astype(np.int16).view(np.uint16)
    wide = table[saturated]
    wide.flags.writeable = False
    return wide


Gather = Callable[[np.ndarray], np.ndarray]
"""Strided window view of raw wire samples -> contiguous float32 matrix of linear samples."""


class Pcm16Decoder:
    """PCM16 little-endian wire samples."""

    sample_width = 2
    dtype = _PCM16
    silence = b"\x00\x00"

    def __init__(self) -> None:
        # A C-level callable (no Python frame per frame): int16 windows -> float32 matrix.
        self.gather: Gather = partial(np.ndarray.astype, dtype=np.float32)

    def decode(self, data: bytes) -> np.ndarray:
        """Even-length PCM16 bytes -> int16 samples (a read-only view, no copy)."""
        return np.frombuffer(data, dtype=_PCM16)


class _G711Decoder:
    sample_width = 1
    dtype = np.dtype(np.uint8)
    silence: bytes
    _table: np.ndarray
    _float_table: np.ndarray

    def __init__(self) -> None:
        # The table's own ``take``: code windows -> decoded float32 matrix, no Python frame.
        self.gather: Gather = self._float_table.take

    def decode(self, data: bytes) -> np.ndarray:
        """Code bytes -> int16 samples."""
        return self._table.take(np.frombuffer(data, dtype=np.uint8))


class MulawDecoder(_G711Decoder):
    """G.711 μ-law wire samples."""

    silence = b"\xff"
    _table = g711.MULAW_TO_PCM16
    _float_table = g711.MULAW_TO_PCM16.astype(np.float32)


class AlawDecoder(_G711Decoder):
    """G.711 A-law wire samples."""

    silence = b"\xd5"  # A-law has no zero code; 0xD5 decodes to +8, the line's idle value
    _table = g711.ALAW_TO_PCM16
    _float_table = g711.ALAW_TO_PCM16.astype(np.float32)


class Pcm16Encoder:
    """PCM16 little-endian wire samples."""

    def __init__(self) -> None:
        self._samples = np.empty(0, dtype=_PCM16)

    def encode(self, samples: np.ndarray) -> bytes:
        """int16 samples -> PCM16 little-endian bytes."""
        return samples.astype(_PCM16, copy=False).tobytes()

    def quantize_array(self, y: np.ndarray) -> np.ndarray:
        """Filter output (float32, clobbered) -> new int16 array, rounded and saturated."""
        _clip(y, _INT16_MIN, _INT16_MAX, y)
        _rint(y, y)
        return y.astype(np.int16)

    def quantize(self, y: np.ndarray) -> bytes:
        """Filter output (float32, clobbered) -> PCM16 bytes, rounded and saturated."""
        _clip(y, _INT16_MIN, _INT16_MAX, y)
        _rint(y, y)
        samples = self._samples
        if samples.shape != y.shape:
            samples = self._samples = np.empty(y.shape, dtype=_PCM16)
        samples[...] = y
        return samples.tobytes()


class _G711Encoder:
    _law: str
    _table: np.ndarray

    def __init__(self) -> None:
        self._wide = _wide_table(self._law)
        self._index = np.empty(0, dtype=np.intp)  # intp: ``take`` then needs no index conversion

    def encode(self, samples: np.ndarray) -> bytes:
        """int16 samples -> code bytes."""
        return self._table.take(samples.astype(np.int16, copy=False).view(np.uint16)).tobytes()

    def quantize(self, y: np.ndarray) -> bytes:
        """Filter output (float32, clobbered) -> codes of the rounded, saturated samples.

        Needs |y| < MAX_PEAK_GAIN x full scale, which any bank's output of int16 input satisfies.
        """
        _rint(y, y)
        index = self._index
        if index.shape != y.shape:
            index = self._index = np.empty(y.shape, dtype=np.intp)
        index[...] = y
        return self._wide.take(index).tobytes()


class MulawEncoder(_G711Encoder):
    """G.711 μ-law wire samples."""

    _law = "mulaw"
    _table = g711.PCM16_TO_MULAW


class AlawEncoder(_G711Encoder):
    """G.711 A-law wire samples."""

    _law = "alaw"
    _table = g711.PCM16_TO_ALAW


Decoder = Pcm16Decoder | MulawDecoder | AlawDecoder
Encoder = Pcm16Encoder | MulawEncoder | AlawEncoder

_DECODERS: dict[str, type[Pcm16Decoder] | type[_G711Decoder]] = {
    "pcm16": Pcm16Decoder,
    "mulaw": MulawDecoder,
    "alaw": AlawDecoder,
}
_ENCODERS: dict[str, type[Pcm16Encoder] | type[_G711Encoder]] = {
    "pcm16": Pcm16Encoder,
    "mulaw": MulawEncoder,
    "alaw": AlawEncoder,
}


def decoder_for(encoding: Encoding) -> Decoder:
    """The decode stage for ``encoding``."""
    try:
        return _DECODERS[encoding]()  # type: ignore[return-value]
    except KeyError:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}") from None


def encoder_for(encoding: Encoding) -> Encoder:
    """The encode stage for ``encoding``."""
    try:
        return _ENCODERS[encoding]()  # type: ignore[return-value]
    except KeyError:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}") from None
