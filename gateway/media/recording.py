"""Call recording: one stereo 16 kHz WAV per call, caller left, agent right, time-aligned.

The media path only appends the provider's own frames to two in-memory channels
(`RecordingTimeline`, pure: the caller passes the clock). Caller audio runs on its own
sample clock; agent audio is placed at the time the provider plays it, and silence fills
the rest. Five times a second `CallRecorder` converts the settled part to 16 kHz PCM16
stereo (`StereoConverter`), and every two seconds a worker thread appends what has piled up
to the session's own `<run>.wav.<id>.part` (`WavFile`); at the end the header is finalized and
the file published as `<run>.wav` (`publish_recording`). A call with a second media session
(a stream restarted mid-call) gets the second session appended to the first, not written over
it. A `.part` left by a process that died mid-call is repaired and published by
`recover_recordings`, which the gateway runs at start and every minute. The event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import struct
import time
import uuid
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gateway.audio import AudioFormat, Transcoder

log = logging.getLogger("gateway.media")

RECORDING_FORMAT = AudioFormat("pcm16", 16000)
RECORDINGS_DIR = "recordings"


def recording_enabled(setting: bool | Sequence[str], workflow_id: str | None) -> bool:
    """`recording: true` records every call; a list records the calls of those workflow ids."""
    if isinstance(setting, bool):
        return setting
    return workflow_id is not None and workflow_id in setting


def recording_path(data_dir: str | os.PathLike[str], run_id: str) -> Path:
    """Where the finished WAV of `run_id` lives (run ids never contain a path separator)."""
    return Path(data_dir) / RECORDINGS_DIR / f"{run_id}.wav"


class RecordingTimeline:
    """Both channels of a call in the provider's format, on one sample clock. Pure.

    Sample 0 is `start` (monotonic seconds). `take(now)` hands over everything older than
    `settle_seconds` (equal lengths, silence-padded), which is then final: agent audio is
    only ever placed at or after `now`, and a `clear` only cuts what has not played yet.
    """

    def __init__(
        self,
        fmt: AudioFormat,
        *,
        start: float,
        settle_seconds: float = 0.4,
        gap_seconds: float = 1.0,
        jitter_seconds: float = 0.03,
        max_lag_seconds: float = 2.0,
        max_ahead_seconds: float = 10.0,
    ) -> None:
        self.format = fmt
        self.start = start
        self._width = fmt.bytes_per_sample
        self._rate = fmt.sample_rate
        self._silence = fmt.silence
        self._settle = int(settle_seconds * fmt.sample_rate)
        self._gap = int(gap_seconds * fmt.sample_rate)
        self._max_lag = int(max_lag_seconds * fmt.sample_rate)
        self._jitter = int(jitter_seconds * fmt.sample_rate)
        self._tolerance = max(1, fmt.sample_rate // 1000)  # 1 ms of timer jitter is not an overlap
        self._max_bytes = int((max_ahead_seconds + settle_seconds) * fmt.sample_rate) * self._width
        self._caller = bytearray()
        self._caller_started = False
        self._agent = bytearray()
        self.taken = 0  # samples handed over, the same for both channels
        self.dropped = 0  # caller frames refused because the caller ran far ahead of real time

    def position(self, at: float) -> int:
        """The sample `at` (monotonic seconds) falls on."""
        return round((at - self.start) * self._rate)

    @property
    def seconds(self) -> float:
        """Length so far (handed over or pending), in seconds."""
        pending = max(len(self._caller), len(self._agent)) // self._width
        return (self.taken + pending) / self._rate

    def caller(self, frame: bytes, now: float) -> None:
        """A caller frame that arrived at `now`.

        The provider streams in real time from `start`, so frames follow each other on their
        own clock (a late burst is the network's delay, not a pause); only a frame arriving
        more than `gap_seconds` after the stream's end is placed after silence.
        """
        buffer = self._caller
        if len(buffer) > self._max_bytes:
            self.dropped += 1
            return
        if self._caller_started:
            end = len(buffer) // self._width
            begins = self.position(now) - self.taken - len(frame) // self._width
            if begins - end > self._gap:
                buffer += self._silence * (begins - end)
        else:
            self._caller_started = True  # the stream began at `start`, whenever its first frame got here
        buffer += frame

    def agent(self, frame: bytes, at: float) -> None:
        """An agent frame the provider starts playing at `at`.

        Audio that arrives a little late (under `jitter_seconds`) joins the end of what is
        already there rather than leaving a click-sized hole; a real pause becomes silence.
        """
        buffer = self._agent
        end = len(buffer) // self._width
        begins = self.position(at) - self.taken
        if begins > end + self._jitter:
            buffer += self._silence * (begins - end)
        elif begins < end - self._tolerance:
            del buffer[max(begins, 0) * self._width :]  # replaces what was cut by a clear
        buffer += frame

    def cleared(self, now: float) -> None:
        """Barge-in at `now`: agent audio that had not played yet never will."""
        cut = self.position(now) - self.taken
        if cut * self._width < len(self._agent):
            del self._agent[max(cut, 0) * self._width :]

    def take(self, now: float) -> tuple[bytes, bytes] | None:
        """The settled audio of both channels, equal lengths; None when there is none yet.

        A caller stream running late (a network stall) is waited for up to `max_lag_seconds`;
        after that its missing part becomes silence.
        """
        samples = self.position(now) - self._settle - self.taken
        caller = len(self._caller) // self._width
        if caller < samples <= caller + self._max_lag:
            samples = caller
        return self._take(samples)

    def take_all(self) -> tuple[bytes, bytes] | None:
        """End of call: everything pending, padded to equal lengths."""
        return self._take(max(len(self._caller), len(self._agent)) // self._width)

    def _take(self, samples: int) -> tuple[bytes, bytes] | None:
        if samples <= 0:
            return None
        size = samples * self._width
        out = []
        for buffer in (self._caller, self._agent):
            if len(buffer) < size:
                buffer += self._silence * ((size - len(buffer)) // self._width)
            out.append(bytes(buffer[:size]))
            del buffer[:size]
        self.taken += samples
        return out[0], out[1]


class StereoConverter:
    """Caller and agent audio (provider format) -> interleaved 16 kHz PCM16 stereo frames. Pure.

    Keeps each channel's resampler state across stretches; a stretch of ~200 ms costs about
    what ten 20 ms frames do, so the loop can afford it (see `CallRecorder` for why not a thread).
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self._left = Transcoder(fmt, RECORDING_FORMAT)
        self._right = Transcoder(fmt, RECORDING_FORMAT)
        self._carry = (b"", b"")  # output one channel has beyond the other

    def convert(self, caller: bytes, agent: bytes) -> bytes:
        """One stretch of both channels (equal lengths) as stereo frames."""
        return self._interleave(self._left.process(caller), self._right.process(agent))

    def finish(self) -> bytes:
        """End of call: the resamplers' tails, both channels padded to the same length."""
        return self._interleave(self._left.flush(), self._right.flush(), final=True)

    def _interleave(self, left: bytes, right: bytes, *, final: bool = False) -> bytes:
        left, right = self._carry[0] + left, self._carry[1] + right
        if final:
            longest = max(len(left), len(right))
            left, right = left.ljust(longest, b"\0"), right.ljust(longest, b"\0")
        n = min(len(left), len(right)) // 2
        self._carry = (left[n * 2 :], right[n * 2 :])
        if not n:
            return b""
        frames = np.empty((n, 2), dtype="<i2")
        frames[:, 0] = np.frombuffer(left, dtype="<i2", count=n)
        frames[:, 1] = np.frombuffer(right, dtype="<i2", count=n)
        return frames.tobytes()


_WAV_HEADER_BYTES = 44  # what `wave` writes for PCM: RIFF, fmt (16 bytes), data
_STEREO_FRAME_BYTES = 4
_COPY_FRAMES = 1 << 16
# Part files this process has open. Only the recording thread opens, closes and sweeps them.
_open_parts: set[Path] = set()


def _published_name(partial: Path) -> Path:
    """`<run>.wav.<id>.part` (or the older `<run>.wav.part`) -> `<run>.wav`."""
    name = partial.name
    return partial.with_name(name[: name.rindex(".wav.") + 4])


def publish_recording(partial: Path, path: Path) -> None:
    """Make the finished WAV `partial` the call's recording at `path`.

    The first session's file is renamed into place. A later session of the same call is
    appended to what is there (through a temporary file and an atomic rename, so a reader
    never sees half a file). Blocking: run it on the recording thread.
    """
    if not path.exists():
        os.replace(partial, path)
        return
    merged = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.merge")
    try:
        with wave.open(str(merged), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(RECORDING_FORMAT.sample_rate)
            for source in (path, partial):
                with wave.open(str(source)) as wav:
                    if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (
                        2,
                        2,
                        RECORDING_FORMAT.sample_rate,
                    ):
                        raise ValueError(f"{source.name} is not 16 kHz stereo PCM16")
                    while chunk := wav.readframes(_COPY_FRAMES):
                        out.writeframesraw(chunk)
        os.replace(merged, path)
    finally:
        merged.unlink(missing_ok=True)
    partial.unlink()


def repair_partial(partial: Path) -> int:
    """Fix the header of a `.part` whose writer died (its sizes say only the first write); the frames.

    Only a file with the header `WavFile` writes is touched; a torn last frame is cut off.
    """
    with open(partial, "r+b") as f:
        head = f.read(_WAV_HEADER_BYTES)
        if (
            len(head) < _WAV_HEADER_BYTES
            or head[:4] != b"RIFF"
            or head[8:16] != b"WAVEfmt "
            or struct.unpack("<I", head[16:20])[0] != 16
            or head[36:40] != b"data"
            or struct.unpack("<HHI", head[20:28]) != (1, 2, RECORDING_FORMAT.sample_rate)
        ):
            raise ValueError(f"{partial.name} is not a recording this gateway wrote")
        size = f.seek(0, os.SEEK_END) - _WAV_HEADER_BYTES
        data = size - size % _STEREO_FRAME_BYTES
        f.truncate(_WAV_HEADER_BYTES + data)
        f.seek(4)
        f.write(struct.pack("<I", 36 + data))
        f.seek(40)
        f.write(struct.pack("<I", data))
    return data // _STEREO_FRAME_BYTES


def recover_recordings(
    directory: Path, *, idle_seconds: float = 30.0, now: Callable[[], float] = time.time
) -> list[Path]:
    """Publish the `.part` files nobody has written for `idle_seconds` (their writer died).

    Part files this process has open are never touched; another instance's live recording
    (a shared data directory) is appended to every two seconds, so an idle one is abandoned. Each is
    repaired and published like a finished session (appended to an existing recording of the
    same call). A file whose content cannot be recovered is logged and kept aside as
    `<name>.unrecoverable`; one the disk refused is tried again next time. Blocking: run it
    on the recording thread. Returns the recordings written.
    """
    recovered: list[Path] = []
    try:
        candidates = sorted(directory.glob("*.wav*.part"))
    except OSError:
        return recovered
    for partial in candidates:
        if partial in _open_parts:
            continue  # ours and alive, however long the disk has kept it waiting
        try:
            if now() - partial.stat().st_mtime < idle_seconds:
                continue
            frames = repair_partial(partial)
            path = _published_name(partial)
            publish_recording(partial, path)
        except OSError as exc:  # perhaps passing (permissions, a full disk): tried again next sweep
            log.error("could not recover the recording %s: %s", partial.name, exc)
            continue
        except (ValueError, EOFError, wave.Error) as exc:  # the content: set aside, said once
            aside = partial.with_name(partial.name + ".unrecoverable")
            with contextlib.suppress(OSError):
                os.replace(partial, aside)
            log.error("could not recover the recording %s: %s (kept as %s)", partial.name, exc, aside.name)
            continue
        log.warning(
            "recovered %.1f s of an interrupted recording into %s", frames / RECORDING_FORMAT.sample_rate, path.name
        )
        recovered.append(path)
    return recovered


class WavFile:
    """A 16 kHz stereo PCM16 WAV written as `<name>.<id>.part` and published whole. Blocking: a worker thread's.

    Each media session writes its own part file, so two sessions of one call never share one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.part")
        self._file: BinaryIO | None = None
        self._wav: wave.Wave_write | None = None
        self.frames = 0

    def append(self, frames: bytes) -> None:
        """Append interleaved stereo frames."""
        if not frames:
            return
        if self._wav is None:
            self._open()
        assert self._wav is not None and self._file is not None
        self._wav.writeframesraw(frames)
        self._file.flush()  # on disk, not in a buffer, should the process die (`recover_recordings`)
        self.frames += len(frames) // _STEREO_FRAME_BYTES

    def finish(self, frames: bytes) -> int:
        """Append the last frames, finalize the header and publish (`publish_recording`); this
        session's frame count."""
        self.append(frames)
        if self._wav is None:
            self._open()
        self._close()
        publish_recording(self.partial, self.path)
        return self.frames

    def abort(self) -> None:
        """Give up: close and remove the partial file."""
        try:
            self._close()
        finally:
            self.partial.unlink(missing_ok=True)

    def _open(self) -> None:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "wb")  # noqa: SIM115 (open across frames until _close)
        _open_parts.add(self.partial)
        wav = wave.open(self._file, "wb")  # noqa: SIM115 (closed in _close)
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(RECORDING_FORMAT.sample_rate)
        self._wav = wav

    def _close(self) -> None:
        """Finalize the header and close the file (`wave` leaves a file object it was given open)."""
        wav, file, self._wav, self._file = self._wav, self._file, None, None
        try:
            if wav is not None:
                wav.close()
        finally:
            if file is not None:
                file.close()
            _open_parts.discard(self.partial)


_executor: ThreadPoolExecutor | None = None


def recording_executor() -> Executor:
    """The process-wide worker thread recordings are written by."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(1, thread_name_prefix="recording")
    return _executor


async def sweep_recordings(directory: Path, *, every_seconds: float = 60.0, idle_seconds: float = 30.0) -> None:
    """Run `recover_recordings` on the recording thread now and every `every_seconds`, for ever."""
    loop = asyncio.get_running_loop()
    while True:
        await loop.run_in_executor(
            recording_executor(), functools.partial(recover_recordings, directory, idle_seconds=idle_seconds)
        )
        await asyncio.sleep(every_seconds)


class CallRecorder:
    """One call's recording, fed by the media session (which sees `caller`, `agent`, `cleared`, `finish`).

    Every `convert_seconds` the settled audio is converted on the loop, in small stretches;
    every `write_seconds` what has piled up goes to the disk from a worker thread. Conversion
    stays on the loop on purpose: in a thread it would hold the GIL in long numpy-and-Python
    stretches, and the loop thread waiting for it cost more than the conversion itself (the
    bridge's CPU per call doubled in the benchmark); the thread only writes bytes.
    """

    def __init__(
        self,
        path: Path,
        fmt: AudioFormat,
        *,
        convert_seconds: float = 0.2,
        write_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        executor: Executor | None = None,
    ) -> None:
        self.path = path
        self.timeline = RecordingTimeline(fmt, start=clock())
        self.converter = StereoConverter(fmt)
        self.file = WavFile(path)
        self._clock = clock
        self._convert_seconds = convert_seconds
        self._writes_every = max(1, round(write_seconds / convert_seconds))
        self._ticks = 0
        self._pending = bytearray()  # converted frames waiting for the next write
        self._executor = executor or recording_executor()
        self._loop = asyncio.get_running_loop()
        self._writing: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(convert_seconds, self._tick)
        self.failed: str | None = None

    # -- the media path: appends only ---------------------------------------------------
    def caller(self, frame: bytes) -> None:
        """A frame of caller audio, as the provider sent it."""
        if self.failed is None:
            self.timeline.caller(frame, self._clock())

    def agent(self, frame: bytes, at: float) -> None:
        """A frame of agent audio (provider format) that starts playing at `at` (monotonic)."""
        if self.failed is None:
            self.timeline.agent(frame, at)

    def cleared(self, now: float) -> None:
        """The agent's queued audio was dropped at `now` (barge-in)."""
        self.timeline.cleared(now)

    # -- conversion on the loop, writes in the background --------------------------------
    def _tick(self) -> None:
        self._timer = self._loop.call_later(self._convert_seconds, self._tick)
        stretch = self.timeline.take(self._clock())
        if stretch is not None:
            self._pending += self.converter.convert(*stretch)
        self._ticks += 1
        if self._ticks % self._writes_every:
            return
        writing = self._writing
        if writing is not None:
            if not writing.done():
                return  # the disk is slow: the audio waits in memory for the next write
            if writing.exception() is not None:
                self._fail(writing.exception())
                return
        if self._pending:
            frames, self._pending = bytes(self._pending), bytearray()
            self._writing = self._loop.run_in_executor(self._executor, self.file.append, frames)

    def _fail(self, exc: BaseException | None) -> None:
        self.failed = f"{type(exc).__name__}: {exc}"
        log.error("recording %s failed: %s", self.path.name, self.failed)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        self._loop.run_in_executor(self._executor, self._abort)

    def _abort(self) -> None:
        try:
            self.file.abort()
        except OSError as exc:
            log.error("could not remove %s: %s", self.file.partial, exc)

    async def finish(self) -> dict[str, Any]:
        """Write the rest, finalize the WAV; what to add to the `media.ended` entry."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.failed is None and self._writing is not None:
            try:
                await self._writing
            except Exception as exc:
                self._fail(exc)
        if self.failed is None:
            stretch = self.timeline.take_all()
            if stretch is not None:
                self._pending += self.converter.convert(*stretch)
            self._pending += self.converter.finish()
            frames, self._pending = bytes(self._pending), bytearray()
            try:
                count = await self._loop.run_in_executor(self._executor, self.file.finish, frames)
            except Exception as exc:
                self._fail(exc)
            else:
                return {
                    "recording_seconds": round(count / RECORDING_FORMAT.sample_rate, 3),
                    "recording_dropped": self.timeline.dropped,
                }
        return {"recording_error": self.failed}
