"""Control requests to every worker on SQLite: what PostgreSQL's LISTEN/NOTIFY does across instances.

A request about a call (`clear`, `hangup`, `replaced`) is published by whichever worker got it;
the worker that owns the call's media session acts (`SessionRegistry.handle_control`), the others
ignore it. The parent runs a `RelayServer` on a Unix socket; each worker's `RelayClient` connects
to it, sends what it publishes, and gets every message any worker sent (its own included).

The framing is pure (`encode`, `LineDecoder`, `decode`): one JSON object per line,
`{"run_id": ..., "action": ..., "data": {...}}`. JSON escapes every newline inside a string, so
a line is one message; a line longer than `MAX_LINE` or not a valid message is dropped alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gateway")

MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Control:
    """One control request: `action` for the media of call `run_id`."""

    run_id: str
    action: str
    data: dict[str, Any] = field(default_factory=dict)


def encode(control: Control) -> bytes:
    """One line carrying `control`."""
    body = {"run_id": control.run_id, "action": control.action, "data": control.data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def decode(line: bytes) -> Control | None:
    """The message of one line (without its newline), or None when it is not one."""
    try:
        body = json.loads(line)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    run_id, action, data = body.get("run_id"), body.get("action"), body.get("data", {})
    if not isinstance(run_id, str) or not isinstance(action, str) or not isinstance(data, dict):
        return None
    return Control(run_id, action, data)


class LineDecoder:
    """Splits a byte stream into lines (pure). A line longer than `max_line` is dropped whole
    (counted in `dropped`), and the stream goes on at the next newline."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.dropped = 0
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by `data`, in order, without their newlines."""
        lines: list[bytes] = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.max_line:
                    if not self._skipping:
                        self.dropped += 1
                    self._skipping = True
                    self._buffer.clear()
                return lines
            if self._skipping or end > self.max_line:
                if not self._skipping:
                    self.dropped += 1
                self._skipping = False
            else:
                lines.append(bytes(self._buffer[:end]))
            del self._buffer[: end + 1]


class RelayServer:
    """The parent's side: every valid line a worker sends goes to every connected worker."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self._clients: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=self.listener)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        decoder = LineDecoder()
        try:
            while data := await reader.read(65536):
                for line in decoder.feed(data):
                    if decode(line) is not None:
                        self.broadcast(line + b"\n")
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def broadcast(self, line: bytes) -> None:
        for client in list(self._clients):
            if client.is_closing():
                self._clients.discard(client)
                continue
            client.write(line)  # a worker that stopped reading is cut off by its buffer's close

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            client.close()
        self._clients.clear()


class RelayClient:
    """A worker's side: `publish` sends to every worker; `on_control` gets what any worker sent.
    While the relay cannot be reached (it always runs while the parent does) a request is handed
    to this worker's own handler, which acts if this worker owns the media."""

    RETRY_SECONDS = 0.5

    def __init__(self, path: str, on_control: Callable[[Control], None]) -> None:
        self.path = path
        self.on_control = on_control
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="control-relay")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)

    async def _run(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError:
                await asyncio.sleep(self.RETRY_SECONDS)
                continue
            self._writer = writer
            self._connected.set()
            decoder = LineDecoder()
            try:
                while data := await reader.read(65536):
                    for line in decoder.feed(data):
                        control = decode(line)
                        if control is not None:
                            self.on_control(control)
            except (ConnectionError, OSError):
                pass
            self._writer = None
            self._connected.clear()
            writer.close()
            log.warning("control relay connection lost: connecting again")
            await asyncio.sleep(self.RETRY_SECONDS)

    async def publish(self, control: Control) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            log.warning("control relay not connected: %s for run=%s handled here only", control.action, control.run_id)
            self.on_control(control)
            return
        writer.write(encode(control))
        await writer.drain()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
