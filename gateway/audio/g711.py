"""G.711 μ-law and A-law as lookup tables, bit-exact with the stdlib ``audioop`` codec.

Decoding indexes a 256-entry table by the code byte; encoding indexes a 65,536-entry table by
the PCM16 sample viewed as ``uint16``. The tables are built once, at import, by vectorising the
reference C algorithm (CCITT G.711 as written in CPython's ``audioop.c``): ``audioop`` goes away
in Python 3.13, so it is the tests' oracle, never a runtime dependency.
"""

from __future__ import annotations

import numpy as np

_PCM16 = np.dtype("<i2")

# Segment end points of the reference implementation (14-bit μ-law, 13-bit A-law magnitudes).
_MULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _all_pcm16() -> np.ndarray:
    """Every PCM16 value, ordered so that entry ``i`` is the sample whose uint16 view is ``i``."""
    return np.arange(1 << 16, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_mulaw_encode() -> np.ndarray:
    pcm = _all_pcm16() >> 2  # audioop feeds the 14-bit value to the encoder
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 32635) + (0x84 >> 2)
    seg = np.searchsorted(_MULAW_SEG_END, mag, side="left")
    code = (seg << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _build_mulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_alaw_encode() -> np.ndarray:
    pcm = _all_pcm16() >> 3  # audioop feeds the 13-bit value to the encoder
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left")
    quant = np.where(seg < 2, mag >> 1, mag >> np.clip(seg, 0, 15)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant)
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = ((a & 0x0F) << 4) + np.where(seg == 0, 8, 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


MULAW_TO_PCM16: np.ndarray = _build_mulaw_decode()
"""int16[256]: μ-law code -> linear sample."""
PCM16_TO_MULAW: np.ndarray = _build_mulaw_encode()
"""uint8[65536]: linear sample (as uint16) -> μ-law code."""
ALAW_TO_PCM16: np.ndarray = _build_alaw_decode()
"""int16[256]: A-law code -> linear sample."""
PCM16_TO_ALAW: np.ndarray = _build_alaw_encode()
"""uint8[65536]: linear sample (as uint16) -> A-law code."""

for _table in (MULAW_TO_PCM16, PCM16_TO_MULAW, ALAW_TO_PCM16, PCM16_TO_ALAW):
    _table.flags.writeable = False

MULAW_TO_ALAW: bytes = PCM16_TO_ALAW[MULAW_TO_PCM16.view(np.uint16)].tobytes()
"""256-byte ``bytes.translate`` table: μ-law code -> A-law code (through the linear value)."""
ALAW_TO_MULAW: bytes = PCM16_TO_MULAW[ALAW_TO_PCM16.view(np.uint16)].tobytes()
"""256-byte ``bytes.translate`` table: A-law code -> μ-law code (through the linear value)."""


def _pcm16_index(pcm: bytes) -> np.ndarray:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<u2")


def decode_mulaw(data: bytes) -> bytes:
    """μ-law bytes -> PCM16 little-endian bytes (same as ``audioop.ulaw2lin(data, 2)``)."""
    return MULAW_TO_PCM16.take(np.frombuffer(data, dtype=np.uint8)).astype(_PCM16, copy=False).tobytes()


def encode_mulaw(pcm: bytes) -> bytes:
    """PCM16 little-endian bytes -> μ-law bytes (same as ``audioop.lin2ulaw(pcm, 2)``)."""
    return PCM16_TO_MULAW.take(_pcm16_index(pcm)).tobytes()


def decode_alaw(data: bytes) -> bytes:
    """A-law bytes -> PCM16 little-endian bytes (same as ``audioop.alaw2lin(data, 2)``)."""
    return ALAW_TO_PCM16.take(np.frombuffer(data, dtype=np.uint8)).astype(_PCM16, copy=False).tobytes()


def encode_alaw(pcm: bytes) -> bytes:
    """PCM16 little-endian bytes -> A-law bytes (same as ``audioop.lin2alaw(pcm, 2)``)."""
    return PCM16_TO_ALAW.take(_pcm16_index(pcm)).tobytes()
