"""The event-loop edge of batched transcoding: frames submitted in one loop iteration, one batch.

A session hands each frame to its ``StreamTranscoder.submit(frame, on_done)``. With batching on,
the first frame queued in an iteration schedules one ``call_soon``; the loop runs it at the top of
its next pass, before any callback that pass brings, so a frame waits for nothing but the rest of
the current iteration. That run transcodes everything queued (``BatchTranscoder``) and calls each
``on_done`` with its output, in submission order, so each stream's frames keep their order.

With fewer than ``min_streams`` streams of its kind alive, or batching off, ``submit`` transcodes
inline and calls ``on_done`` before it returns: one call pays nothing for the machinery. A run
with fewer frames queued than a batch needs (``MIN_GROUP``) transcodes them one by one; after
``SPARSE_RUNS`` such runs in a row (calls whose frames do not meet in one iteration), ``submit``
goes inline for the next ``BACKOFF_FRAMES`` frames, then gathers again to see.

Anything else the session does on the same stream (a control message, a DTMF digit, the end) must
come after the frames submitted before it: ``settle()`` runs the pending batch now. ``reset()``
(barge-in) drops the stream's queued frames, whose output the reset would discard anyway.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import ClassVar

from . import batch
from .batch import MIN_GROUP, BatchTranscoder
from .formats import AudioFormat
from .transcoder import Transcoder

log = logging.getLogger(__name__)

OnDone = Callable[[bytes], None]
MIN_STREAMS = MIN_GROUP
"""Fewest live streams of one conversion kind for their ``submit`` to queue at all: only streams
of the same kind share a product, and fewer than ``MIN_GROUP`` frames of a kind are not batched."""
SPARSE_RUNS = 20
"""Consecutive runs with too few frames to batch after which ``submit`` backs off..."""
BACKOFF_FRAMES = 500
"""...transcoding this many frames inline (no queue, no ``call_soon``) before it tries again."""


class _Count:
    """Live streams of one kind (an int behind an attribute: ``submit`` reads it per frame)."""

    def __init__(self) -> None:
        self.live = 0

    def drop(self) -> None:
        self.live -= 1


class BatchScheduler:
    """Collects the frames of one event loop's streams per iteration and runs them as one batch."""

    def __init__(
        self,
        call_soon: Callable[[Callable[[], None]], object],
        min_streams: int = MIN_STREAMS,
        min_group: int = MIN_GROUP,
        sparse_runs: int = SPARSE_RUNS,
        backoff_frames: int = BACKOFF_FRAMES,
    ) -> None:
        self._call_soon = call_soon
        self.min_streams = min_streams
        self.sparse_runs = sparse_runs  # 0: never back off
        self.backoff_frames = backoff_frames
        self.inline = 0  # frames still to transcode inline (backing off)
        self._sparse = 0  # consecutive runs too small to batch
        self._core = BatchTranscoder(min_group)
        self._jobs: list[tuple[StreamTranscoder, bytes, OnDone, int]] = []
        self._kinds: dict[str, _Count] = {}
        self.batches = 0  # runs that batched two or more frames (for tests and benchmarks)

    def register(self, stream: StreamTranscoder) -> _Count:
        """Count ``stream`` among its kind's live streams until it is garbage; returns the count."""
        count = self._kinds.setdefault(stream.transcoder.kind, _Count())
        count.live += 1
        weakref.finalize(stream, count.drop)
        return count

    def queue(self, stream: StreamTranscoder, data: bytes, on_done: OnDone) -> None:
        """Queue one frame for this iteration's batch."""
        if not self._jobs:
            self._call_soon(self.run)
        self._jobs.append((stream, data, on_done, stream.generation))
        stream.queued += 1

    def run(self) -> None:
        """Transcode everything queued and hand out the results, in submission order."""
        jobs = self._jobs
        if not jobs:
            return
        self._jobs = []
        work: list[tuple[Transcoder, bytes]] = []
        callbacks: list[OnDone] = []
        for stream, data, on_done, generation in jobs:
            if generation == stream.generation:  # else reset since: dropped (and no longer counted)
                stream.queued -= 1
                work.append((stream.transcoder, data))
                callbacks.append(on_done)
        if len(work) < self._core.min_group:  # too few to form a group: skip the grouping
            outputs = [transcoder.process(data) for transcoder, data in work]
            self._sparse += 1
            if self._sparse == self.sparse_runs:  # frames do not meet: stop paying to gather them
                self.inline = self.backoff_frames
                self._sparse = 0
        else:
            outputs = self._core.run(work)
            self.batches += 1
            self._sparse = 0
        for on_done, out in zip(callbacks, outputs, strict=True):
            try:
                on_done(out)
            except Exception:  # one stream's failure must not cost the others their frames
                log.exception("a transcoded frame's callback failed")

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BatchScheduler]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def for_running_loop(cls) -> BatchScheduler:
        """The running event loop's scheduler (one per loop, so every call on it batches together)."""
        loop = asyncio.get_running_loop()
        scheduler = cls._by_loop.get(loop)
        if scheduler is None:
            scheduler = cls._by_loop[loop] = cls(
                loop.call_soon, MIN_STREAMS, batch.MIN_GROUP, SPARSE_RUNS, BACKOFF_FRAMES
            )
        return scheduler


class StreamTranscoder:
    """One direction of a call: a ``Transcoder`` plus ``submit``, batched through ``scheduler``
    (or, without one, transcoded inline). ``process``, ``flush``, ``reset`` and ``delay`` keep the
    ``Transcoder``'s meaning, after whatever this stream has queued."""

    def __init__(self, src: AudioFormat, dst: AudioFormat, scheduler: BatchScheduler | None = None) -> None:
        self.transcoder = Transcoder(src, dst)
        self.scheduler = scheduler
        self.generation = 0  # bumped by reset: queued frames of an older generation are dropped
        self.queued = 0  # frames in the scheduler's pending batch
        self._process = self.transcoder.process
        self._min_streams = 0
        self._kind = _Count()
        if scheduler is not None and self.transcoder.resampler is not None:
            self._kind = scheduler.register(self)
            self._min_streams = scheduler.min_streams
        else:
            self.scheduler = None  # nothing to batch: no resampling, or batching off

    @property
    def src(self) -> AudioFormat:
        return self.transcoder.src

    @property
    def dst(self) -> AudioFormat:
        return self.transcoder.dst

    @property
    def delay(self) -> int:
        return self.transcoder.delay

    def submit(self, data: bytes, on_done: OnDone) -> None:
        """Transcode ``data`` and call ``on_done(output)``: now, or in this loop iteration's batch."""
        scheduler = self.scheduler
        if not self.queued:
            if scheduler is None or self._kind.live < self._min_streams:
                on_done(self._process(data))
                return
            if scheduler.inline:  # backing off: frames have not been meeting in the loop
                scheduler.inline -= 1
                on_done(self._process(data))
                return
        scheduler.queue(self, data, on_done)  # type: ignore[union-attr]  # queued: a scheduler

    def settle(self) -> None:
        """Deliver this stream's queued frames now (before something that must follow them)."""
        if self.queued and self.scheduler is not None:
            self.scheduler.run()

    def process(self, data: bytes) -> bytes:
        """As ``Transcoder.process``, after the frames already queued."""
        self.settle()
        return self.transcoder.process(data)

    def flush(self) -> bytes:
        """As ``Transcoder.flush``, after the frames already queued."""
        self.settle()
        return self.transcoder.flush()

    def reset(self) -> None:
        """As ``Transcoder.reset``; frames still queued are dropped (their ``on_done`` never runs)."""
        self.generation += 1
        self.queued = 0
        self.transcoder.reset()

    def __repr__(self) -> str:
        return f"StreamTranscoder({self.src} -> {self.dst}, {'batched' if self.scheduler else 'direct'})"


def stream_transcoder(src: AudioFormat, dst: AudioFormat, batching: bool) -> StreamTranscoder:
    """A session's transcoder for ``src -> dst``: batched on the running loop's scheduler, or direct."""
    return StreamTranscoder(src, dst, BatchScheduler.for_running_loop() if batching else None)
