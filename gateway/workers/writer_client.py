"""A worker's SQLite store under `--workers N`: the busiest transactions go to the one shared
writer process (`shared_writer`), control requests through the parent's relay, and leadership is
a file lock (`leadership`).

It is `WriterProcessStore` with the writer process reached over a Unix socket instead of being
this process's child: the same forwarding, lease ids chosen here and released when an answer is
lost (`WriterGone`), and the same fallback (the transactions run in this process's own writer
thread while the writer process cannot be reached). When the connection drops (the writer
process died and the parent starts it again) the worker connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from gateway.ipc import Answers, FrameChannel
from gateway.store.sqlite import SQLiteStore
from gateway.store.writer_process import WriterGone, WriterProcessStore
from gateway.workers.leadership import FileLeadership
from gateway.workers.relay import Control, RelayClient
from gateway.workers.shared_writer import HELLO

log = logging.getLogger("gateway.store")

HELLO_WAIT = 5.0  # seconds a worker's store waits at open for the writer process to accept it


class WriterClient:
    """This worker's connection to the shared writer process: `request(payload)` sends
    `(token, payload)` and returns a future for its answer (`WriterGone` if the connection ends
    first). `process` names the current connection (a new one must be told the routing again).
    It is `up` once the writer process has said hello on it (`shared_writer.HELLO`)."""

    RETRY_MIN = 0.2
    RETRY_MAX = 5.0

    def __init__(self, path: str) -> None:
        self.path = path
        self.process: socket.socket | None = None
        self._channel: FrameChannel | None = None
        self._answers = Answers()
        self._pid: int | None = None  # the writer's, once it said hello
        self.hello = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry = self.RETRY_MIN
        self._reconnect: asyncio.TimerHandle | None = None
        self._stopping = False

    @property
    def up(self) -> bool:
        """Connected, and the writer process has accepted the connection (said hello)."""
        return self._pid is not None and self._channel is not None and not self._channel.closed

    @property
    def pid(self) -> int | None:
        return self._pid

    def connect(self) -> None:
        """Connect now (on the running loop); on failure, try again later."""
        self._loop = asyncio.get_running_loop()
        self._reconnect = None
        if self._stopping:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            log.warning("cannot reach the store writer process (%s): writing here, trying again", exc)
            self._later()
            return
        self.process = sock
        self._channel = FrameChannel(self._loop, sock.fileno(), self._items, self._lost)

    def _items(self, items: list[tuple[int, Any]]) -> None:
        if items and items[0][0] == HELLO:
            (_, self._pid), items = items[0], items[1:]
            self.hello.set()
            if self._retry > self.RETRY_MIN:
                log.info("connected to the store writer process again (pid %s)", self._pid)
            self._retry = self.RETRY_MIN
        self._answers.answered(items)

    def _later(self) -> None:
        assert self._loop is not None
        self._reconnect = self._loop.call_later(self._retry, self.connect)
        self._retry = min(self._retry * 2, self.RETRY_MAX)

    def request(self, payload: Any) -> asyncio.Future[Any]:
        assert self._loop is not None and self._channel is not None
        token, future = self._answers.add(self._loop)
        self._channel.send((token, payload))
        return future

    def _lost(self) -> None:
        self._close("the connection closed")
        if not self._stopping:
            log.error("store writer process connection lost: writing here until it is back")
            self._later()

    def _close(self, why: str) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.process is not None:
            self.process.close()
            self.process = None
        self._pid = None
        self.hello.clear()
        self._answers.fail(lambda: WriterGone(f"sqlite: the store writer process did not answer ({why})"))

    async def stop(self) -> None:
        self._stopping = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        self._close("stopped")


class WorkerSQLiteStore(WriterProcessStore):
    """The SQLite store of one worker among several (see the module)."""

    def __init__(self, path: str, *, synchronous: str = "FULL", writer_socket: str, relay_socket: str) -> None:
        super().__init__(path, synchronous=synchronous)
        self.writer_socket = writer_socket
        self.leadership = FileLeadership(path + ".leader")
        self.relay = RelayClient(relay_socket, self._relayed)

    async def open(self) -> None:
        await SQLiteStore.open(self)  # this worker's reader and fallback writer (the parent migrated)
        client = WriterClient(self.writer_socket)
        client.connect()
        self.writer = client  # type: ignore[assignment]  # the same interface as a ChildProcess
        with contextlib.suppress(TimeoutError):  # the writer normally runs: forward from the first request
            await asyncio.wait_for(client.hello.wait(), HELLO_WAIT)
        await self.relay.start()

    async def close(self) -> None:
        await self.relay.stop()
        self.leadership.release_all()
        await super().close()  # the connection to the writer process, then this process's threads

    def _relayed(self, control: Control) -> None:
        if self.control_handler is not None:
            self.control_handler(control.run_id, control.action, dict(control.data))

    async def publish_control(self, run_id: str, action: str, data: dict[str, Any] | None = None) -> None:
        """Through the parent's relay to every worker (this one included); the media's owner acts."""
        await self.relay.publish(Control(run_id, action, dict(data or {})))

    async def hold_leadership(self, name: str) -> bool:
        """One worker leads `name` among every process on this database file (see `leadership`)."""
        return self.leadership.hold(name)
