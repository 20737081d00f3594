"""The lean WebSocket layer for providers' media sockets: picows (a compiled WebSocket
implementation) inside uvicorn's HTTP protocol, on the same port and paths.

uvicorn's httptools protocol parses the upgrade request and hands it to the gateway's
`DeadlineProtocol`, which gives a media path (`WS_PATH`) to `MediaEdge.upgrade` and every
other WebSocket to uvicorn's own implementation. Here the upgrade is checked (`MediaEntry`:
signature or JWT and its replay claim, limits; a refusal is answered 403 and, as a policy
violation, charged to the caller's rate limit) with the socket's reading paused; then the
request is fed to a picows server-side protocol, which answers 101 and parses frames.

Frames reach `LeanWire` by callback. Until the session listens (the stream token is read
first) messages are queued and read with `receive`, as ASGI messages, bounded (reading
pauses when the queue is full); after it, each message goes straight to the provider's
parser and the session (`ProviderSocket.listen`): no future, task or ASGI dict per frame.
Sends write to the transport directly. The wire reassembles fragmented messages (up to
`MAX_MESSAGE_BYTES`: 1009 beyond), refuses invalid UTF-8 text (1007) and interleaved data
frames (1002), answers pings (picows) and completes close handshakes either way.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools
from picows import WSAutoPingStrategy, WSCloseCode, WSListener, WSMsgType
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # the server protocol, fed the upgrade here
from starlette.routing import compile_path

from gateway.api.middleware import POLICY_VIOLATION
from gateway.api.telephony import WS_PATH
from gateway.errors import GatewayError
from gateway.media.entry import MediaEntry, Refusal
from gateway.media.provider_socket import HandshakeError, Message

log = logging.getLogger("gateway.media")


class _PicowsLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows's log lines: its info lines (every connection) and its errors, which are a peer's
    broken frames ("WS parser error ..."), are debug: that close and its reason reach the
    session or the handshake, whose one line says it (see `LeanWire.on_ws_disconnected`).
    An exception it logs with its traceback (a bug here) stays an error."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level < logging.ERROR or not kwargs.get("exc_info"):
            level = min(level, logging.DEBUG)
        if self.logger.isEnabledFor(level):
            self.logger.log(level, "media socket: " + str(msg), *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:
        return bool(self.logger.isEnabledFor(min(level, logging.DEBUG)))


_PICOWS_LOG = _PicowsLog(logging.getLogger("gateway.media.picows"), {})

MAX_MESSAGE_BYTES = 1 << 20  # as uvicorn's ws_max_size under `gateway serve`
QUEUE_PAUSE, QUEUE_RESUME = 32, 8  # messages queued before the session listens: reading pauses at this many
CLOSE_TIMEOUT = 2.0  # after sending close, how long the peer has to answer before the connection is dropped
HANDSHAKE_TIMEOUT = 5.0
_MEDIA_PATH = compile_path(WS_PATH)[0]
_CODES = {code.value: code for code in WSCloseCode}
_TEXT, _BINARY, _CONTINUATION, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.CLOSE


class ClientGone(GatewayError, OSError):
    """A send on a socket whose peer has gone (as uvicorn's `ClientDisconnected`)."""


class LeanWire(WSListener):
    """One media socket's frames: a picows listener that turns frames into whole messages for
    the provider socket, pulled (`receive`) or pushed (`listen`), and sends for it."""

    def __init__(self) -> None:
        self.transport: Any = None  # picows WSTransport, once connected
        self.closed_code: int | None = None  # the connection has ended for the reader: no more messages
        self._close_sent = False
        self._queue: deque[tuple[str | None, bytes | None]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._on_message: Callable[[str | None, bytes | None], None] | None = None
        self._on_close: Callable[[int, str], None] | None = None
        self.failure = ""  # what the peer did wrong, when the wire closed the socket for it
        self._fragments: bytearray | None = None
        self._fragments_text = False
        self._close_timer: asyncio.TimerHandle | None = None
        self.disconnected = asyncio.get_running_loop().create_future()

    # -- picows callbacks -----------------------------------------------------------------
    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind in (_TEXT, _BINARY):
            if self._fragments is not None:
                self._fail(1002, "a data frame began before the fragmented message ended")
            elif not frame.fin:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
                self._fragments_text = kind == _TEXT
            elif kind == _TEXT:
                try:
                    text = frame.get_payload_as_utf8_text()
                except UnicodeDecodeError:
                    self._fail(1007, "text message is not valid UTF-8")
                    return
                self._deliver(text, None)
            else:
                self._deliver(None, frame.get_payload_as_bytes())
        elif kind == _CONTINUATION:
            fragments = self._fragments
            if fragments is None:
                self._fail(1002, "continuation frame without a message to continue")
                return
            fragments += frame.get_payload_as_memoryview()
            if len(fragments) > MAX_MESSAGE_BYTES:
                self._fail(1009, f"message over {MAX_MESSAGE_BYTES} bytes")
            elif frame.fin:
                self._fragments = None
                if self._fragments_text:
                    try:
                        text = fragments.decode("utf-8")
                    except UnicodeDecodeError:
                        self._fail(1007, "text message is not valid UTF-8")
                        return
                    self._deliver(text, None)
                else:
                    self._deliver(None, bytes(fragments))
        elif kind == _CLOSE:
            code = int(frame.get_close_code()) if frame.payload_size >= 2 else 1005
            if not self._close_sent:  # the peer began the close: answer it, as RFC 6455 asks
                self._close_sent = True
                transport.send_close(_CODES.get(code, WSCloseCode.OK) if code != 1005 else WSCloseCode.OK)
            transport.disconnect()
            self._ended(code)
        # ping: answered by picows (auto pong); pong: nothing to do

    def on_ws_disconnected(self, transport: Any) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        code, handshake = 1006, transport.close_handshake
        if not self._close_sent and handshake is not None and handshake.sent is not None and handshake.recv is None:
            code = int(handshake.sent.code)  # picows closed it for a broken frame: say why
            self.failure = self.failure or handshake.sent.reason
        self._ended(code)
        if not self.disconnected.done():
            self.disconnected.set_result(None)

    # -- messages to the reader -----------------------------------------------------------
    def _deliver(self, text: str | None, data: bytes | None) -> None:
        if self.closed_code is not None:
            return
        on_message = self._on_message
        if on_message is not None:
            try:
                on_message(text, data)
            except Exception:
                log.exception("media message handling failed")
                self.close(1011, "internal error")
            return
        self._queue.append((text, data))
        if len(self._queue) >= QUEUE_PAUSE and not self._paused:
            self._paused = True
            self.transport.underlying_transport.pause_reading()
        self._wake()

    def _ended(self, code: int) -> None:
        if self.closed_code is not None:
            return
        self.closed_code = code
        on_close = self._on_close
        if on_close is not None:
            self._on_close = self._on_message = None
            on_close(code, self.failure)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol: close with `code`; the reader sees the end, with `reason`
        (its one log line says it: the session's end, or the handshake's refusal)."""
        self.failure = reason
        self._fragments = None
        self.close(code, reason)
        self._ended(code)

    async def receive(self) -> dict[str, Any]:
        """The next message as an ASGI message (pull mode, until `listen`)."""
        while not self._queue:
            if self.closed_code is not None:
                return {"type": "websocket.disconnect", "code": self.closed_code, "reason": self.failure}
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        text, data = self._queue.popleft()
        if self._paused and len(self._queue) <= QUEUE_RESUME:
            self._resume()
        if text is not None:
            return {"type": "websocket.receive", "text": text}
        return {"type": "websocket.receive", "bytes": data}

    def listen(
        self, on_message: Callable[[str | None, bytes | None], None], on_close: Callable[[int, str], None]
    ) -> None:
        """Push mode: what is queued is delivered now, then each message as it arrives."""
        queued, self._queue = self._queue, deque()
        for text, data in queued:
            on_message(text, data)
        if self.closed_code is not None:
            on_close(self.closed_code, self.failure)
            return
        self._on_message, self._on_close = on_message, on_close
        if self._paused:
            self._resume()

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.underlying_transport.resume_reading()

    # -- sends ----------------------------------------------------------------------------
    def send_text(self, text: str) -> bool:
        if self._close_sent or self.closed_code is not None:
            return False
        self.transport.send(_TEXT, text)
        return True

    def send_text_bytes(self, text: bytes) -> bool:
        if self._close_sent or self.closed_code is not None:
            return False
        self.transport.send(_TEXT, text)
        return True

    def send_bytes(self, data: bytes) -> bool:
        if self._close_sent or self.closed_code is not None:
            return False
        self.transport.send(_BINARY, data)
        return True

    async def send(self, message: Message) -> None:
        """ASGI `send` for a provider socket that only speaks ASGI messages."""
        kind = message["type"]
        if kind == "websocket.send":
            text = message.get("text")
            if not (self.send_text(text) if text is not None else self.send_bytes(message.get("bytes") or b"")):
                raise ClientGone("the media socket's peer has gone")
        elif kind == "websocket.close":
            self.close(message.get("code", 1000), message.get("reason") or "")

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (once); the connection drops when the peer answers, or after `CLOSE_TIMEOUT`."""
        transport = self.transport
        if self._close_sent or transport is None or transport.is_disconnected:
            return
        self._close_sent = True
        transport.send_close(_CODES.get(code, WSCloseCode.INTERNAL_ERROR), reason.encode("utf-8")[:123])
        if self.closed_code is not None:  # the peer already said it is gone
            transport.disconnect()
        else:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.disconnect, False)


def server_protocol(listener_factory: Callable[[Any], WSListener]) -> Any:
    """A picows server-side protocol, as `picows.ws_create_server` makes one (its constructor is
    not public API: pyproject.toml pins the picows minor version this was written against)."""
    return WSProtocol(
        None,  # host and port: a server's
        None,  # path: a server's
        False,  # client side
        listener_factory,
        _PICOWS_LOG,
        True,  # disconnect on an exception in a callback (the wire catches its own)
        HANDSHAKE_TIMEOUT,
        False,  # auto ping: no pings of ours
        20,
        20,
        WSAutoPingStrategy.PING_WHEN_IDLE,
        True,  # answer pings
        MAX_MESSAGE_BYTES,
        None,  # extra response headers
        4096,  # initial read buffer
    )


class MediaEdge:
    """Serves the media paths of `app` (the gateway's app: its context, dial services and edge
    middleware) on the lean layer; `DeadlineProtocol` asks it first at every upgrade."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def upgrade(self, http: Any) -> bool:
        """Take the upgrade `http` (uvicorn's httptools protocol) has parsed, when its path is a
        media socket's; False (nothing done) for any other path."""
        try:
            url = httptools.parse_url(http.url)
        except httptools.HttpParserInvalidURLError:
            return False  # uvicorn's own implementation answers it
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        match = _MEDIA_PATH.match(path)
        if match is None:
            return False
        scope = http.scope
        request = [scope["method"].encode(), b" ", http.url, b" HTTP/1.1\r\n"]
        for name, value in scope["headers"]:
            request += [name, b": ", value, b"\r\n"]
        request.append(b"\r\n")
        ws_scope = {
            **scope,
            "type": "websocket",
            "scheme": "wss" if http.scheme == "https" else "ws",
            "path": http.root_path + path,
            "raw_path": http.root_path.encode("ascii") + raw_path,
            "query_string": url.query or b"",
            "subprotocols": [],
            "app": self.app,
        }
        http.connections.discard(http)
        http.transport.pause_reading()  # until the upgrade is checked: then picows reads
        connection = _Connection(
            self, http.transport, http.server_state, ws_scope, match.groupdict(), b"".join(request)
        )
        task = asyncio.get_running_loop().create_task(connection.serve())
        http.server_state.tasks.add(task)
        task.add_done_callback(http.server_state.tasks.discard)
        return True

    def charge(self, scope: dict[str, Any]) -> None:
        """A media socket refused as a policy violation costs its address one token (see `EdgeMiddleware`)."""
        edge = getattr(self.app, "edge", None)
        if edge is not None:
            edge.charge_refused_socket(scope)


class _Connection:
    """One media socket on the lean layer, from its checked upgrade to its close."""

    def __init__(
        self,
        edge: MediaEdge,
        transport: Any,
        server_state: Any,
        scope: dict[str, Any],
        path: dict[str, str],
        request: bytes,
    ) -> None:
        self.edge, self.transport, self.server_state = edge, transport, server_state
        self.scope, self.path, self.request = scope, path, request
        self.wire: LeanWire | None = None

    def shutdown(self) -> None:
        """uvicorn's server shutdown (as its own WebSocket protocols: 1012)."""
        if self.wire is not None and self.wire.transport is not None:
            self.wire.close(1012, "server shutting down")
        else:
            self.transport.close()

    async def serve(self) -> None:
        self.server_state.connections.add(self)
        try:
            await self._serve()
        finally:
            self.server_state.connections.discard(self)

    async def _serve(self) -> None:
        app = self.edge.app
        entry = MediaEntry(app.state.gateway, getattr(app.state, "dial", None), self.scope, self.path)
        try:
            refusal = await entry.check_upgrade()
        except Exception:
            log.exception("media upgrade check failed for %s", self.scope["path"])
            refusal = Refusal(1011, "internal error")
        if refusal is not None:
            self._refuse(refusal)
            return
        wire = self.wire = LeanWire()
        try:
            self._hand_to_picows(wire)
        except BaseException:
            entry.release()
            raise
        if wire.transport is None:  # picows refused the request itself (answered 400)
            entry.release()
            return
        code = 1000
        try:
            session, start = await entry.open(wire.receive, wire.send, wire)
        except HandshakeError as exc:
            entry.refused_before_audio(exc)
            if exc.code == POLICY_VIOLATION:
                self.edge.charge(self.scope)
            if not entry.peer_closed:
                wire.close(exc.code, exc.reason[:120])
            await wire.disconnected
            return
        except Exception:
            log.exception("media socket failed run=%s", entry.run_id[:64])
            wire.close(1011, "internal error")
            await wire.disconnected
            return
        try:
            await entry.run(session, start)
        except Exception:
            log.exception("media session failed run=%s", entry.run_id[:64])
            code = 1011
        finally:
            if not entry.peer_closed:
                wire.close(code)
        await wire.disconnected

    def _refuse(self, refusal: Refusal) -> None:
        """Answer the upgrade 403 (as uvicorn does for a socket closed before it is accepted)."""
        if refusal.code == POLICY_VIOLATION:
            self.edge.charge(self.scope)
        status = b"500 Internal Server Error" if refusal.code == 1011 else b"403 Forbidden"
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()

    def _hand_to_picows(self, wire: LeanWire) -> None:
        """A picows server protocol on the transport, fed the upgrade request: it answers 101
        (or 400 for a request that is not a valid WebSocket upgrade) and reads frames from here on."""
        protocol = server_protocol(lambda request: wire)
        transport = self.transport
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        request, fed = memoryview(self.request), 0
        while fed < len(request) and not transport.is_closing():
            buffer = protocol.get_buffer(-1)
            size = min(len(buffer), len(request) - fed)
            buffer[:size] = request[fed : fed + size]
            fed += size
            protocol.buffer_updated(size)
        if not transport.is_closing():
            transport.resume_reading()
