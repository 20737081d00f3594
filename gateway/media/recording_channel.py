"""One side of a call's stereo recording as a mono WAV, read in chunks (never whole in memory).

The recording is 16 kHz PCM16 stereo, caller left and agent right (`calls.record.RECORDING_CHANNELS`);
Dograh's `user_recording_url` and `bot_recording_url` are links to the caller's and the agent's
side, which this cuts out of the one file as it is served.
"""

from __future__ import annotations

import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK_FRAMES = 16000  # one second per read


def mono_wav_header(frames: int, rate: int) -> bytes:
    """The 44-byte header of a PCM16 mono WAV of `frames` samples at `rate`."""
    data = frames * 2
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data)
    )


def one_channel(path: Path, channel: int, *, chunk_frames: int = CHUNK_FRAMES) -> Iterator[bytes]:
    """The WAV bytes of `channel` (0 left, 1 right) of the stereo PCM16 WAV at `path`: the header,
    then the samples a chunk at a time. A mono file is served as it is (either channel)."""
    with wave.open(str(path), "rb") as source:
        channels, width, rate, frames = (
            source.getnchannels(),
            source.getsampwidth(),
            source.getframerate(),
            source.getnframes(),
        )
        if width != 2 or channels not in (1, 2):
            raise ValueError(f"recording is not 16-bit mono or stereo ({channels} channels, {width * 8} bits)")
        yield mono_wav_header(frames, rate)
        while chunk := source.readframes(chunk_frames):
            samples = np.frombuffer(chunk, dtype="<i2")
            yield samples.tobytes() if channels == 1 else samples[channel::2].tobytes()
