"""Pickled messages between the gateway and its child processes, over a socket pair.

A frame is a 4-byte little-endian length and a pickled list of items. `FrameChannel` puts one
end of the pair on an event loop: items sent in one turn of the loop go out in one frame (one
write), and each frame read is handed over as a list. Both sides are the gateway's own code, in
processes it started, so pickle is safe here; nothing read from a network goes through it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import pickle
import struct
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway")

READ_SIZE = 1 << 20
_LENGTH = struct.Struct("<I")


class FrameReader:
    """Splits bytes read from a pipe into frames (pure)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by `data`, in order."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= 4:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if len(self._buffer) < 4 + size:
                break
            frames.append(bytes(self._buffer[4 : 4 + size]))
            del self._buffer[: 4 + size]
        return frames


def frame(items: list[Any]) -> bytes:
    """One frame carrying `items`."""
    payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class FrameChannel:
    """One end of a socket pair, on an event loop: `send` queues items, which go out in one
    frame per loop turn; `on_items` gets each incoming frame's items; `on_closed` the end of
    the stream (or an error on it). An item that cannot be pickled does not take the others of
    its turn down with it: `unsendable(item, error)` gives what goes in its place (by default
    nothing: it is logged and dropped)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        on_items: Callable[[list[Any]], None],
        on_closed: Callable[[], None],
        *,
        unsendable: Callable[[Any, BaseException], Any] | None = None,
    ) -> None:
        self.loop = loop
        self.fd = fd
        self.on_items = on_items
        self.on_closed = on_closed
        self.unsendable = unsendable
        self._reader = FrameReader()
        self._queued: list[Any] = []
        self._unsent = b""
        self.closed = False
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def send(self, item: Any) -> None:
        if self.closed:
            return
        if not self._queued:
            self.loop.call_soon(self._flush)
        self._queued.append(item)

    def _flush(self) -> None:
        if self.closed or not self._queued:
            return
        items, self._queued = self._queued, []
        waiting = bool(self._unsent)
        try:
            self._unsent += frame(items)
        except Exception:
            self._unsent += b"".join(self._frame_each(items))
        if self._unsent and not waiting:
            self._write()

    def _frame_each(self, items: list[Any]) -> list[bytes]:
        frames = []
        for item in items:
            try:
                frames.append(frame([item]))
            except Exception as exc:
                log.error("an item could not be sent to the other process: %s", type(exc).__name__)
                if self.unsendable is not None:
                    try:
                        frames.append(frame([self.unsendable(item, exc)]))
                    except Exception as again:
                        log.error("its replacement could not be sent either: %s", type(again).__name__)
        return frames

    def _write(self) -> None:
        try:
            written = os.write(self.fd, self._unsent)
        except BlockingIOError:
            written = 0
        except OSError:
            self._close()
            return
        self._unsent = self._unsent[written:]
        if self._unsent:
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        self.loop.remove_writer(self.fd)
        if not self.closed and self._unsent:
            self._write()

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close()
            return
        self._hand_over(data)

    def drain(self) -> None:
        """Hand over what the peer wrote that is still in the pipe (it has ended)."""
        while not self.closed:
            try:
                data = os.read(self.fd, READ_SIZE)
            except OSError:  # nothing more now (BlockingIOError), or the pipe is gone
                return
            if not data:
                return
            self._hand_over(data)

    def _hand_over(self, data: bytes) -> None:
        for payload in self._reader.feed(data):
            if self.closed:  # closed by an earlier frame's handler
                return
            self.on_items(pickle.loads(payload))

    def _close(self) -> None:
        """The stream ended (or failed): stop, and tell `on_closed`."""
        if not self.closed:
            self.close()
            self.on_closed()

    def close(self) -> None:
        """Stop reading and writing (the caller closes the descriptor)."""
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)


class Answers:
    """Requests sent and not answered yet: a future per token, answered by `(token, answer)`
    items or failed all at once."""

    def __init__(self) -> None:
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tokens = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, loop: asyncio.AbstractEventLoop) -> tuple[int, asyncio.Future[Any]]:
        """A new token and the future its answer goes to."""
        token = next(self._tokens)
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting[token] = future
        return token, future

    def answered(self, items: list[tuple[int, Any]]) -> None:
        for token, answer in items:
            future = self._waiting.pop(token, None)
            if future is not None and not future.done():
                future.set_result(answer)

    def fail(self, error: Callable[[], BaseException]) -> None:
        """Fail every request still waiting with `error()`."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error())


class Backoff:
    """How long to wait before starting a process again: `low` seconds, doubling up to `high`
    while it keeps exiting within `stable_after` seconds of its start."""

    def __init__(self, low: float, high: float, stable_after: float) -> None:
        self.low, self.high, self.stable_after = low, high, stable_after
        self.delay = low

    def next(self, ran: float) -> float:
        """The wait before the next start of a process that ran `ran` seconds."""
        if ran >= self.stable_after:
            self.delay = self.low
        delay = self.delay
        self.delay = min(delay * 2, self.high)
        return delay


def log_restart(label: str, pid: int, code: int | None, ran: float, delay: float) -> None:
    log.error("%s (pid %d) exited with code %s after %.0f s; starting it again in %.0f s", label, pid, code, ran, delay)


class ChildProcess:
    """One child process (multiprocessing `spawn`) the gateway asks things of over a
    `FrameChannel`: `request(payload)` sends `(token, payload)` and returns a future for the
    `(token, answer)` the child sends back. When the child exits, every request still waiting
    fails with `lost(why)` and, unless the gateway is stopping, the child is started again
    (after 1 s, doubling up to 30 s while it keeps exiting within a minute of its start).

    `target(*args, conn)` is the child's main; it owns the other end of the pair, and should end
    when that end reaches end-of-file (the gateway closed it, or died)."""

    RESTART_MIN = 1.0
    RESTART_MAX = 30.0
    STABLE_AFTER = 60.0

    def __init__(
        self, label: str, target: Callable[..., None], args: tuple[Any, ...], *, lost: Callable[[str], BaseException]
    ) -> None:
        self.label = label
        self.target = target
        self.args = args
        self.lost = lost
        self.process: Any = None  # a multiprocessing SpawnProcess
        self._context = multiprocessing.get_context("spawn")
        self._conn: Any = None
        self._channel: FrameChannel | None = None
        self._answers = Answers()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started_at = 0.0
        self._backoff = Backoff(self.RESTART_MIN, self.RESTART_MAX, self.STABLE_AFTER)
        self._restart: asyncio.TimerHandle | None = None
        self._stopping = False

    @property
    def up(self) -> bool:
        """Whether requests can be sent (the child may still be starting: they wait in the pipe)."""
        return self._channel is not None and not self._channel.closed

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.is_alive() else None

    @property
    def waiting(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._answers)

    def start(self) -> None:
        """Start the child (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=self.target, args=(*self.args, theirs), name=f"gateway {self.label}")
        process.start()
        theirs.close()  # the child has its own copy; ours would keep its end-of-file from coming
        self.process, self._conn, self._started_at = process, ours, time.monotonic()
        self._channel = FrameChannel(self._loop, ours.fileno(), self._answered, lambda: self._fail("its pipe closed"))
        self._loop.add_reader(process.sentinel, self._exited)

    def request(self, payload: Any) -> asyncio.Future[Any]:
        """Send `payload`; the future gets the child's answer (or `lost(...)`)."""
        assert self._loop is not None and self._channel is not None and not self._channel.closed
        token, future = self._answers.add(self._loop)
        self._channel.send((token, payload))
        return future

    def _answered(self, items: list[tuple[int, Any]]) -> None:
        self._answers.answered(items)

    def _fail(self, why: str) -> None:
        self._answers.fail(lambda: self.lost(why))

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _exited(self) -> None:
        assert self._loop is not None
        process = self.process
        self._loop.remove_reader(process.sentinel)
        process.join(1.0)  # the sentinel closes while the child exits, a moment before it can be reaped
        if self._channel is not None:
            self._channel.drain()  # answers it sent before it ended still count
        self._close_channel()
        if self._answers:
            log.warning(
                "%s: exited with code %s with %d requests unanswered", self.label, process.exitcode, len(self._answers)
            )
        self._fail(f"exit code {process.exitcode}")
        if self._stopping:
            return
        ran = time.monotonic() - self._started_at
        delay = self._backoff.next(ran)
        log_restart(self.label, process.pid, process.exitcode, ran, delay)
        self._restart = self._loop.call_later(delay, self._start_again)

    def _start_again(self) -> None:
        self._restart = None
        if not self._stopping:
            self.start()
            log.info("%s started again: pid %d", self.label, self.process.pid)

    async def stop(self, grace: float = 10.0) -> None:
        """Close the pipe (the child ends), wait up to `grace` seconds, then SIGKILL it."""
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        process = self.process
        if process is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(process.sentinel)
        self._close_channel()
        self._fail("stopped")
        deadline = time.monotonic() + grace
        while process.exitcode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if process.exitcode is None:
            log.warning("%s (pid %d) did not stop within %.0f s: killed", self.label, process.pid, grace)
            process.kill()
        process.join(1)


def serve_frames(conn: Any, handle: Callable[[list[Any]], list[Any]]) -> None:
    """A child's side without an event loop: read frames from `conn` (blocking), answer each
    frame's items with one frame of `handle(items)`, until end-of-file."""
    fd = conn.fileno()
    os.set_blocking(fd, True)
    reader = FrameReader()
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            return
        if not data:
            return
        items = [item for payload in reader.feed(data) for item in pickle.loads(payload)]
        answers = handle(items) if items else []
        if answers:
            out = frame(answers)
            while out:
                out = out[os.write(fd, out) :]
