"""The simulator's audio files: any PCM WAV in, the provider's wire format out; the agent's audio
back out to a WAV. Pure apart from reading and writing the file named.

A WAV of any sample rate, width (8, 16, 24 or 32-bit PCM) and channel count is read: channels are
averaged to mono, samples narrowed to 16 bits, and the rate brought to one the gateway's polyphase
resampler takes (`audioop.ratecv` up to the next supported rate first, e.g. 44.1 kHz to 48 kHz,
so nothing aliases), then `Transcoder` makes the provider's format with its anti-aliasing filter.
"""

from __future__ import annotations

import warnings
import wave
from pathlib import Path

import numpy as np

from gateway.audio import SUPPORTED_RATES, AudioFormat, Transcoder, decode_mulaw
from gateway.errors import GatewayError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop is deprecated in 3.11-3.12 (audioop-lts after)
    import audioop


class AudioFileError(GatewayError, ValueError):
    """A file the simulator cannot use; the message names it and says why."""


def speech_like_signal(seconds: float, rate: int = 8000) -> np.ndarray:
    """A voiced, syllable-shaped tone (harmonics of ~140 Hz under a 4 Hz envelope), int16."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum((0.5 / k) * np.sin(k * phase) for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 0.5
    signal = voice * envelope
    return (signal / (np.max(np.abs(signal)) or 1) * 10000).astype(np.int16)


def generated_audio(seconds: float, fmt: AudioFormat) -> bytes:
    """`seconds` of the speech-like tone in the provider's wire format."""
    transcoder = Transcoder(AudioFormat("pcm16", 8000), fmt)
    return transcoder.process(speech_like_signal(seconds).tobytes()) + transcoder.flush()


def to_mono16(frames: bytes, width: int, channels: int) -> bytes:
    """Interleaved PCM of `width` bytes per sample (8-bit unsigned, the rest signed) as mono int16."""
    if width == 1:
        frames = audioop.bias(frames, 1, -128)  # WAV's 8-bit samples are unsigned
    pcm16 = audioop.lin2lin(frames, width, 2) if width != 2 else frames
    if channels == 1:
        return pcm16
    samples = np.frombuffer(pcm16[: len(pcm16) - len(pcm16) % (2 * channels)], dtype="<i2").reshape(-1, channels)
    mono: bytes = samples.astype(np.int32).mean(axis=1).round().astype("<i2").tobytes()  # numpy's mean is untyped
    return mono


def resampled(pcm16: bytes, rate: int, fmt: AudioFormat) -> bytes:
    """Mono int16 at `rate` in the provider's format `fmt`."""
    if rate not in SUPPORTED_RATES:
        target = min((r for r in SUPPORTED_RATES if r >= rate), default=max(SUPPORTED_RATES))
        pcm16, _ = audioop.ratecv(pcm16, 2, 1, rate, target, None)
        rate = target
    transcoder = Transcoder(AudioFormat("pcm16", rate), fmt)
    return transcoder.process(pcm16) + transcoder.flush()


def read_wav(path: str, fmt: AudioFormat) -> bytes:
    """A PCM WAV file's audio in the provider's format; `AudioFileError` saying what is wrong."""
    try:
        with wave.open(path, "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise AudioFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AudioFileError(f"{path}: is a directory, not a WAV file") from None
    except OSError as exc:
        raise AudioFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except (wave.Error, EOFError) as exc:
        raise AudioFileError(
            f"{path}: not a PCM WAV file ({exc or 'truncated'}); "
            "convert it, e.g. ffmpeg -i IN -acodec pcm_s16le OUT.wav"
        ) from None
    if width not in (1, 2, 3, 4):
        raise AudioFileError(f"{path}: {8 * width}-bit samples; only 8, 16, 24 and 32-bit PCM are read")
    if not frames:
        raise AudioFileError(f"{path}: has no audio")
    if not 1000 <= rate <= 384000:
        raise AudioFileError(f"{path}: a sample rate of {rate} Hz is not audio this simulator can play")
    return resampled(to_mono16(frames, width, channels), rate, fmt)


def write_wav(path: str, wire: bytes, fmt: AudioFormat) -> float:
    """Write the provider-format audio `wire` as a mono 16-bit WAV at its own rate; its seconds."""
    pcm16 = decode_mulaw(wire) if fmt.encoding == "mulaw" else wire
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with wave.open(path, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(fmt.sample_rate)
            wav.writeframes(pcm16)
    except OSError as exc:
        raise AudioFileError(f"{path}: cannot write it: {exc.strerror or exc}") from None
    return len(pcm16) / 2 / fmt.sample_rate
