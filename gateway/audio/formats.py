"""Wire audio formats: an encoding at a sample rate, and the providers' formats."""

from __future__ import annotations

from dataclasses import dataclass

from .codec import ENCODINGS, Encoding
from .filters import SUPPORTED_RATES

_SILENCE = {"pcm16": b"\x00\x00", "mulaw": b"\xff", "alaw": b"\xd5"}


@dataclass(frozen=True)
class AudioFormat:
    """How audio travels on one leg: ``encoding`` at ``sample_rate`` Hz, mono."""

    encoding: Encoding
    sample_rate: int

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"sample_rate must be one of {SUPPORTED_RATES}, got {self.sample_rate!r}")

    @property
    def bytes_per_sample(self) -> int:
        """2 for PCM16, 1 for G.711."""
        return 2 if self.encoding == "pcm16" else 1

    @property
    def silence(self) -> bytes:
        """One sample of silence on the wire (``b"\\x00\\x00"``, μ-law ``0xFF``, A-law ``0xD5``)."""
        return _SILENCE[self.encoding]

    def frame_bytes(self, ms: int = 20) -> int:
        """Bytes in ``ms`` milliseconds of audio (160 for Twilio's 20 ms, 640 for Vonage's)."""
        samples, rest = divmod(self.sample_rate * ms, 1000)
        if ms <= 0 or rest:
            raise ValueError(f"ms must be a positive whole number of samples at {self.sample_rate} Hz, got {ms!r}")
        return samples * self.bytes_per_sample

    def __str__(self) -> str:
        return f"{self.encoding}@{self.sample_rate}"


TWILIO_FORMAT = AudioFormat("mulaw", 8000)
"""Twilio Media Streams: 8 kHz μ-law, 20 ms = 160 bytes."""
VONAGE_FORMAT = AudioFormat("pcm16", 16000)
"""Vonage WebSocket: 16 kHz 16-bit linear PCM, 20 ms = 640 bytes."""
TELNYX_FORMAT = AudioFormat("mulaw", 8000)
"""Telnyx bidirectional RTP stream, PCMU by default (PCMA: A-law): 20 ms = 160 bytes."""
PLIVO_FORMAT = AudioFormat("mulaw", 8000)
"""Plivo `<Stream contentType="audio/x-mulaw;rate=8000">`: 20 ms = 160 bytes."""
