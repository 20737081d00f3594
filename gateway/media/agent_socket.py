"""The WebSocket under a call's agent link: websockets' sans-I/O protocol on an asyncio transport.

Why not `websockets.asyncio`: its per-message machinery (a send lock and async context
manager per `send`, an assembler and futures per `recv`) was the largest item in the gateway's
profile under load (`Connection.send` alone was 29% of its busy time; the write itself is
about 6%). Here a send is one `transport.write`; received messages go into a deque and wake
the reader only when it is waiting.

websockets' sans-I/O protocol does the handshake, control frames (ping replies, the closing
handshake), fragmented messages and every error. Only the two shapes of the steady state take
a shortcut: sending a whole message (header, mask from a pool of `os.urandom` bytes,
websockets' C masking), and receiving whole, final, unmasked text or binary frames while no
fragmented message is open. Every other frame is handed to the protocol whole, so its parser
never holds a partial frame and the two never disagree about where a frame starts.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from collections import deque
from collections.abc import Callable, Mapping

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import OPEN, State
from websockets.uri import parse_uri

from gateway.errors import GatewayError

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

_MASKS = 4096  # mask keys fetched per os.urandom call


class _MaskPool:
    """Unpredictable 4-byte mask keys (RFC 6455 5.3), a page of `os.urandom` at a time."""

    def __init__(self) -> None:
        self._keys = b""
        self._next = 0

    def take(self) -> bytes:
        if self._next >= len(self._keys):
            self._keys, self._next = os.urandom(4 * _MASKS), 0
        key = self._keys[self._next : self._next + 4]
        self._next += 4
        return key


_masks = _MaskPool()


def _holds_nothing(protocol: ClientProtocol) -> bool:
    """True when the protocol's parser holds no partial frame (else it must see the rest itself)."""
    buffer = getattr(getattr(protocol, "reader", None), "buffer", None)
    return buffer is not None and len(buffer) == 0


class SocketClosed(GatewayError):
    """The connection is closed (or was never opened); str() says how."""


class AgentSocket(asyncio.Protocol):
    """One client WebSocket: `open`, `send_bytes`/`send_text`, `receive`, `close`."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 1 << 20,
        max_queue: int = 16,
        ping_interval: float | None = 20,
        ping_timeout: float = 20,
        close_timeout: float = 2,
    ) -> None:
        try:
            self.uri = parse_uri(url)
        except InvalidURI as exc:
            raise SocketClosed(f"invalid URL: {exc}") from None
        self.protocol = ClientProtocol(self.uri, max_size=max_size)
        self.max_size = max_size
        self.max_queue = max_queue
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._messages: deque[bytes | str] = deque()
        self._fragments: list[bytes | bytearray | memoryview] = []
        self._fragment_opcode: Opcode | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._reading_paused = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._closed_reason: str | None = None
        self._inbox = bytearray()  # received bytes not yet a whole frame (fast path only)
        self._fast = False  # the steady state: OPEN, no fragmented message, nothing odd seen
        self._opened = False
        self._listener: tuple[Callable[[bytes | str], None], Callable[[str], None]] | None = None
        self._held = False  # push mode: messages wait in `_messages` (reading pauses at `max_queue`)

    # -- the caller's side ----------------------------------------------------------------
    async def open(self, headers: Mapping[str, str], *, timeout: float, user_agent: str) -> None:
        """Connect and complete the opening handshake within `timeout` seconds."""
        uri = self.uri
        context = ssl.create_default_context() if uri.secure else None
        try:
            async with asyncio.timeout(timeout):
                await self._loop.create_connection(
                    lambda: self, uri.host, uri.port, ssl=context, server_hostname=uri.host if context else None
                )
                request = self.protocol.connect()
                request.headers.update(headers)
                request.headers.setdefault("User-Agent", user_agent)
                self.protocol.send_request(request)
                self._send_pending()
                await self._handshake
        except BaseException:
            self.abort()
            raise
        if self.ping_interval:
            self._ping_timer = self._loop.call_later(self.ping_interval, self._ping)

    def send_bytes(self, data: bytes) -> None:
        """Send one binary message (never waits: see `buffered`)."""
        self._send_message(0x82, data)

    def send_text(self, text: str) -> None:
        """Send one text message."""
        self._send_message(0x81, text.encode())

    def _send_message(self, first_byte: int, data: bytes) -> None:
        """One whole, final, masked frame: FIN + opcode, length, mask key, masked payload."""
        if self.protocol.state is not OPEN or self.transport is None:
            raise SocketClosed(self._closed_reason or self._describe_close(None))
        size = len(data)
        if size < 126:
            header = struct.pack("!BB", first_byte, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", first_byte, 0xFE, size)
        else:
            header = struct.pack("!BBQ", first_byte, 0xFF, size)
        mask = _masks.take()
        self.transport.write(header + mask + apply_mask(data, mask))

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel (0 when closed)."""
        transport = self.transport
        return 0 if transport is None or transport.is_closing() else transport.get_write_buffer_size()

    async def receive(self) -> bytes | str:
        """The next whole message; `SocketClosed` once the connection has ended."""
        while not self._messages:
            if self._closed_reason is not None:
                raise SocketClosed(self._closed_reason)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._messages.popleft()
        if self._reading_paused and len(self._messages) <= self.max_queue // 4 and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return message

    def listen(self, on_message: Callable[[bytes | str], None], on_closed: Callable[[str], None]) -> None:
        """Push mode: each whole message goes to `on_message` as it arrives (what is queued, now),
        and `on_closed(reason)` is called once when the connection has ended; `receive` is not
        called again. No future or task per message."""
        self._listener = (on_message, on_closed)
        self.hold(False)

    def hold(self, held: bool) -> None:
        """Push mode: while held, messages wait in the queue as they do for a reader that is
        behind (reading pauses once `max_queue` wait); released, they are pushed in order."""
        self._held = held
        if not held:
            if self._reading_paused and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
            self._wake()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, then the TCP connection; waits at most `close_timeout`."""
        if self.transport is None:
            return
        if self.protocol.state is OPEN:
            self.protocol.send_close(code, reason)
            self._send_pending()
        try:
            async with asyncio.timeout(self.close_timeout):
                await asyncio.shield(self._lost)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self._fast:
            self._receive_frames(data)
        else:
            self._receive_with_protocol(data)

    def _receive_frames(self, data: bytes) -> None:
        """The fast path: whole final data frames straight to the inbox, the rest to the protocol."""
        inbox = self._inbox
        inbox += data
        offset, end = 0, len(inbox)
        while self._fast and end - offset >= 2:
            first, second = inbox[offset], inbox[offset + 1]
            size, head = second & 0x7F, 2
            if size == 126:
                if end - offset < 4:
                    break
                size, head = int.from_bytes(inbox[offset + 2 : offset + 4], "big"), 4
            elif size == 127:
                if end - offset < 10:
                    break
                size, head = int.from_bytes(inbox[offset + 2 : offset + 10], "big"), 10
            if second & 0x80 or size > self.max_size:
                self._fast = False  # masked by the server, or too big: the protocol fails the connection
                break
            stop = offset + head + size
            if stop > end:
                break
            opcode = first & 0x0F
            if first & 0xF0 == 0x80 and (opcode == 1 or opcode == 2):  # FIN, no RSV bits, text or binary
                payload = bytes(inbox[offset + head : stop])
                self._deliver(Opcode.TEXT if opcode == 1 else Opcode.BINARY, payload)
            else:
                self._receive_with_protocol(bytes(inbox[offset:stop]))
            offset = stop
        if self._fast:
            del inbox[:offset]
        else:
            rest = bytes(inbox[offset:])
            inbox.clear()
            if rest:
                self._receive_with_protocol(rest)
        if len(self._messages) >= self.max_queue and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _receive_with_protocol(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._send_pending()
        if protocol.close_expected() and self._close_timer is None:
            self._close_timer = self._loop.call_later(self.close_timeout, self.abort)
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
        if not self._handshake.done():
            if protocol.handshake_exc is not None:
                self._handshake.set_exception(protocol.handshake_exc)
            elif any(isinstance(event, Response) for event in events):
                self._handshake.set_result(None)
                self._opened = True
        self._fast = (
            self._opened and protocol.state is OPEN and self._fragment_opcode is None and _holds_nothing(protocol)
        )
        if self._opened and protocol.state is not OPEN and self._closed_reason is None:
            self._closed_reason = self._describe_close(None)  # the protocol failed the connection
            self._wake()
        if len(self._messages) >= self.max_queue and not self._reading_paused and self.transport is not None:
            self._reading_paused = True  # the reader is behind: let TCP push back on the agent
            self.transport.pause_reading()

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self.protocol.events_received()
        self._send_pending()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()
        for timer in (self._ping_timer, self._pong_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        if self._closed_reason is None:
            self._closed_reason = self._describe_close(exc)
        if not self._handshake.done():
            self._handshake.set_exception(self.protocol.handshake_exc or ConnectionError(self._closed_reason))
            self._handshake.exception()  # retrieved: open() may already have given up
        if not self._lost.done():
            self._lost.set_result(None)
        self._wake()

    # -- internals ------------------------------------------------------------------------
    def _send_pending(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                try:
                    transport.write_eof()
                except (OSError, RuntimeError):
                    transport.close()
            else:
                transport.close()

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT:
            if frame.fin:
                self._deliver(opcode, frame.data)
            else:
                self._fragment_opcode, self._fragments = opcode, [frame.data]
        elif opcode is Opcode.CONT:
            self._fragments.append(frame.data)
            if frame.fin and self._fragment_opcode is not None:
                self._deliver(self._fragment_opcode, b"".join(self._fragments))
                self._fragment_opcode, self._fragments = None, []
        elif opcode is Opcode.PONG:
            if self._pong_timer is not None:
                self._pong_timer.cancel()
                self._pong_timer = None
                self._ping_timer = self._loop.call_later(self.ping_interval or 20, self._ping)
        elif opcode is Opcode.CLOSE:
            self._closed_reason = self._describe_close(None)
            self._wake()

    def _deliver(self, opcode: Opcode, data: bytes | bytearray | memoryview) -> None:
        if opcode is Opcode.TEXT:
            try:
                message: bytes | str = bytes(data).decode() if isinstance(data, memoryview) else data.decode()
            except UnicodeDecodeError as exc:
                self._fast = False
                self._closed_reason = f"agent sent a text message that is not UTF-8 (byte {exc.start})"
                self.protocol.fail(1007, "invalid UTF-8")
                self._send_pending()
                self._wake()
                return
        else:
            message = bytes(data)
        self._messages.append(message)
        self._wake()

    def _wake(self) -> None:
        if self._listener is not None:
            on_message, on_closed = self._listener
            messages = self._messages
            while messages and not self._held:  # a message may hold the link: the rest wait
                on_message(messages.popleft())
            if self._closed_reason is not None and not messages and self._listener is not None:
                self._listener = None
                on_closed(self._closed_reason)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _ping(self) -> None:
        self._ping_timer = None
        if self.protocol.state is not OPEN:
            return
        self.protocol.send_ping(os.urandom(4))
        self._send_pending()
        self._pong_timer = self._loop.call_later(self.ping_timeout, self._ping_lost)  # the pong schedules the next ping

    def _ping_lost(self) -> None:
        self._fast = False
        self._closed_reason = f"no pong within {self.ping_timeout:g} s"
        self.protocol.fail(1011, "keepalive ping timeout")
        self._send_pending()
        self.abort()

    def _describe_close(self, exc: Exception | None) -> str:
        protocol = self.protocol
        if getattr(protocol, "parser_exc", None) is not None:
            return f"agent broke the WebSocket protocol: {protocol.parser_exc}"
        if protocol.close_rcvd is not None:
            return f"agent closed the connection ({protocol.close_rcvd.code})"
        if protocol.close_sent is not None:
            return f"connection closed ({protocol.close_sent.code})"
        if exc is not None:
            return f"connection lost: {type(exc).__name__}: {exc}"
        return "connection closed (no close frame)" if protocol.state is not State.CONNECTING else "not connected"
