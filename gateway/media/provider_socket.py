"""The provider's side of a media session: one adapter per provider over the socket.

Each adapter turns the provider's messages into a few inbound kinds (audio, dtmf, mark,
stop, bad) and sends frames, marks and clears exactly as that provider accepts them. It
works on the connection's raw ASGI `receive`/`send` (no per-message Starlette wrapper, which
costs more than the check it adds), so it keeps the one state that matters itself: once the
provider has gone, sends are dropped and the next `receive` says STOP. On the lean WebSocket
layer (`gateway.media.ws_edge`) it is also given the `wire`: messages are then pushed to the
session (`listen`, through the adapter's pure `parse`) and sends go to the socket directly.
A provider's adapter implements `handshake`, `parse` (or only `receive`: then it is pulled,
on either layer) and the three sends.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.audio import PLIVO_FORMAT, TELNYX_FORMAT, TWILIO_FORMAT, VONAGE_FORMAT, AudioFormat
from gateway.errors import GatewayError
from gateway.providers import plivo_media, telnyx_media, twilio_media, vonage_media
from gateway.providers.media_json import MediaMessage, MediaMessageError

log = logging.getLogger("gateway.media")

AUDIO, DTMF, MARK, STOP, BAD, OTHER = "audio", "dtmf", "mark", "stop", "bad", "other"
_INBOUND = frozenset({"inbound", "inbound_track"})  # the caller's track (Twilio may omit it: full path)
MAX_MESSAGE_BYTES = 64 * 1024


def closed_reason(code: int, reason: str | None) -> str:
    """The STOP reason of a socket that has closed (with what the peer did wrong, if that was why)."""
    return f"socket closed ({code}: {reason})" if reason else f"socket closed ({code})"


def _before(what: str, message: Message) -> str:
    reason = message.get("reason")
    return (
        f"socket closed before {what} ({message.get('code', 1005)}: {reason})"
        if reason
        else f"socket closed before {what}"
    )


class HandshakeError(GatewayError):
    """The peer did not open the stream as the provider does; close with `code`."""

    def __init__(self, reason: str, code: int = 1008) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass
class StreamStart:
    """What the provider said when the stream opened."""

    stream_id: str | None
    token: str | None
    call_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


Message = MutableMapping[str, Any]  # an ASGI message
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
OnItem = Callable[[str, Any], None]


class PushWire(Protocol):
    """A socket that delivers each inbound message by callback and sends without awaiting (the
    lean WebSocket layer, `gateway.media.ws_edge`): no per-message future, task or ASGI dict."""

    def listen(
        self, on_message: Callable[[str | None, bytes | None], None], on_close: Callable[[int, str], None]
    ) -> None:
        """From now on, call `on_message(text, data)` per message and `on_close(code, reason)`
        once at the end (`reason`: what the peer did wrong, when the gateway closed it for that)."""

    def send_text(self, text: str) -> bool:
        """Send a text message; False when the peer is gone."""

    def send_text_bytes(self, text: bytes) -> bool:
        """Send a text message already encoded as UTF-8; False when the peer is gone."""

    def send_bytes(self, data: bytes) -> bool:
        """Send a binary message; False when the peer is gone."""


class ProviderSocket(abc.ABC):
    """A provider's media socket, as the session sees it."""

    name: str
    audio_format: AudioFormat
    echoes_marks: bool  # True: the provider reports when a mark's audio has played

    def __init__(self, receive: Receive, send: Send, *, wire: PushWire | None = None) -> None:
        self._receive = receive
        self._send = send
        self._wire = wire  # set on the lean layer: pushed messages, direct sends
        self.stream_id: str | None = None
        self.peer_closed = False  # the provider's side is gone: nothing more to send or read
        self.lean = wire is not None  # on the lean WebSocket layer

    @abc.abstractmethod
    async def handshake(self) -> StreamStart:
        """Read the opening messages (no audio) up to the one carrying the stream token."""

    async def receive(self) -> tuple[str, Any]:
        """The next inbound item: (AUDIO, bytes) (DTMF, digit) (MARK, name) (STOP, reason) (BAD, reason) (OTHER, name)."""
        message = await self._receive_message()
        if message["type"] == "websocket.disconnect":
            return STOP, closed_reason(message.get("code", 1005), message.get("reason"))
        return self.parse(message.get("text"), message.get("bytes"))

    def parse(self, text: str | None, data: bytes | None) -> tuple[str, Any]:
        """One inbound message (text or binary) as an item, as `receive` returns it. Pure.
        A provider's socket that overrides `receive` instead may leave this unimplemented: it is
        then always pulled (see `listen`)."""
        raise NotImplementedError

    def listen(self, on_item: OnItem) -> bool:
        """Push mode: from now on every inbound item goes to `on_item` as it arrives (the last
        is STOP), and `receive` is not called again. False (nothing changes) when the socket is
        not on the lean layer or its provider only implements `receive`."""
        wire = self._wire
        if wire is None or type(self).parse is ProviderSocket.parse or type(self).receive is not ProviderSocket.receive:
            return False
        parse = self.parse

        def on_message(text: str | None, data: bytes | None) -> None:
            kind, value = parse(text, data)
            on_item(kind, value)

        def on_close(code: int, reason: str) -> None:
            self.peer_closed = True
            on_item(STOP, closed_reason(code, reason))

        wire.listen(on_message, on_close)
        return True

    @abc.abstractmethod
    async def send_frame(self, frame: bytes) -> None:
        """Send one provider-sized frame of audio."""

    @abc.abstractmethod
    async def send_mark(self, name: str) -> None:
        """Ask the provider to report when the audio sent so far has played."""

    @abc.abstractmethod
    async def send_clear(self) -> None:
        """Ask the provider to drop the audio it has buffered."""

    async def _read_start(
        self, parse: Callable[[str], Any], errors: type[Exception], opening: frozenset[str], label: str
    ) -> Any:
        """The parsed `start` of a JSON-text stream, the `opening` events before it skipped
        (at most four messages); `HandshakeError` for anything else."""
        for _ in range(4):
            message = await self._receive_message()
            if message["type"] == "websocket.disconnect":
                raise HandshakeError(_before("start", message), 1000)
            text = message.get("text")
            if text is None:
                raise HandshakeError(f"binary frame before start: not a {label} media stream")
            try:
                parsed = parse(text)
            except errors as exc:
                raise HandshakeError(f"not a {label} media stream: {exc}") from None
            if parsed.event in opening:
                continue
            if parsed.event != "start":
                raise HandshakeError(f"expected start, got {parsed.event[:32]!r}")
            return parsed
        raise HandshakeError("no start message")

    async def _receive_message(self) -> Message:
        if self.peer_closed:
            return {"type": "websocket.disconnect", "code": 1006}
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self.peer_closed = True
        return message

    def sends_now(self) -> bool:
        """True when `frame_now`/`mark_now` can send without awaiting (the lean layer, and a
        provider's adapter that implements them)."""
        return self._wire is not None and type(self).frame_now is not ProviderSocket.frame_now

    def frame_now(self, frame: bytes) -> None:
        """`send_frame`, without awaiting (only when `sends_now`)."""
        raise NotImplementedError

    def mark_now(self, name: str) -> None:
        """`send_mark`, without awaiting (only when `sends_now`)."""
        raise NotImplementedError

    def _text_now(self, text: str) -> None:
        if not self.peer_closed and not self._wire.send_text(text):  # type: ignore[union-attr]
            self.peer_closed = True

    def _bytes_now(self, data: bytes) -> None:
        if not self.peer_closed and not self._wire.send_bytes(data):  # type: ignore[union-attr]
            self.peer_closed = True

    async def _send_text(self, text: str) -> None:
        if self._wire is not None:
            self._text_now(text)
        else:
            await self._send_message({"type": "websocket.send", "text": text})

    async def _send_bytes(self, data: bytes) -> None:
        if self._wire is not None:
            self._bytes_now(data)
        else:
            await self._send_message({"type": "websocket.send", "bytes": data})

    async def _send_message(self, message: Message) -> None:
        if self.peer_closed:
            return
        try:
            await self._send(message)
        except OSError:  # the server's "client disconnected": the receive side reports the end
            self.peer_closed = True


def classify(parsed: MediaMessage | twilio_media.StreamMessage) -> tuple[str, Any]:
    """The inbound kind of a parsed JSON stream message: the caller's audio (other tracks are
    OTHER), a DTMF digit, a mark echo, the provider's stop; anything else OTHER."""
    event = parsed.event
    if event == "media":
        if parsed.track not in (None, "inbound", "inbound_track"):
            return OTHER, "media." + parsed.track
        return AUDIO, parsed.audio
    if event == "dtmf":
        return DTMF, parsed.digit
    if event == "mark":
        return MARK, parsed.name
    if event == "stop":
        return STOP, "provider sent stop"
    return OTHER, event[:32]


class TwilioSocket(ProviderSocket):
    """Twilio Media Streams: JSON text frames, base64 8 kHz mu-law."""

    name = "twilio"
    audio_format = TWILIO_FORMAT
    echoes_marks = True
    _render: Callable[[bytes], bytes] | None = None  # the stream's media renderer, once it has started

    async def handshake(self) -> StreamStart:
        parsed = await self._read_start(
            twilio_media.parse_stream_message, twilio_media.StreamMessageError, frozenset({"connected"}), "Twilio"
        )
        self.stream_id = parsed.stream_sid
        return StreamStart(
            parsed.stream_sid,
            parsed.custom_parameters.get("stream_token"),
            parsed.call_sid,
            dict(parsed.custom_parameters),
        )

    def parse(self, text: str | None, data: bytes | None) -> tuple[str, Any]:
        if text is None:
            return BAD, "binary frame on a Twilio stream"
        if len(text) <= twilio_media.MAX_MESSAGE_CHARS and (media := twilio_media.parse_media(text)) is not None:
            track, audio = media
            return (AUDIO, audio) if track in _INBOUND else (OTHER, "media." + track)
        try:
            parsed = twilio_media.parse_stream_message(text)
        except twilio_media.StreamMessageError as exc:
            return BAD, str(exc)
        return classify(parsed)

    async def send_frame(self, frame: bytes) -> None:
        await self._send_text(twilio_media.render_media(self.stream_id or "", frame))

    async def send_mark(self, name: str) -> None:
        await self._send_text(twilio_media.render_mark(self.stream_id or "", name))

    def frame_now(self, frame: bytes) -> None:
        render = self._render
        if render is None:
            render = self._render = twilio_media.media_renderer(self.stream_id or "")
        if not self.peer_closed and not self._wire.send_text_bytes(render(frame)):  # type: ignore[union-attr]
            self.peer_closed = True

    def mark_now(self, name: str) -> None:
        self._text_now(twilio_media.render_mark(self.stream_id or "", name))

    async def send_clear(self) -> None:
        await self._send_text(twilio_media.render_clear(self.stream_id or ""))


class JsonStreamSocket(ProviderSocket):
    """A provider whose stream is JSON text frames parsed into `MediaMessage`s (Telnyx, Plivo).

    Subclasses name the parser, the opening events to skip and the renderers.
    """

    opening: frozenset[str] = frozenset()

    @abc.abstractmethod
    def parse_message(self, text: str) -> MediaMessage:
        """One inbound text frame; `MediaMessageError` when malformed."""

    def started(self, start: MediaMessage) -> StreamStart:
        """Take the stream's format and ids from its `start` message."""
        self.stream_id = start.stream_id
        if start.encoding is not None and start.sample_rate is not None:
            self.audio_format = AudioFormat(start.encoding, start.sample_rate)  # type: ignore[arg-type]
        return StreamStart(start.stream_id, start.parameters.get("stream_token"), start.call_id, dict(start.parameters))

    async def handshake(self) -> StreamStart:
        label = self.name.capitalize()
        return self.started(await self._read_start(self.parse_message, MediaMessageError, self.opening, label))

    def parse(self, text: str | None, data: bytes | None) -> tuple[str, Any]:
        if text is None:
            return BAD, f"binary frame on a {self.name} stream"
        try:
            parsed = self.parse_message(text)
        except MediaMessageError as exc:
            return BAD, str(exc)
        return self.kind_of(parsed)

    def kind_of(self, parsed: MediaMessage) -> tuple[str, Any]:
        """The inbound kind of a parsed message (subclasses add their own events)."""
        return classify(parsed)

    def frame_now(self, frame: bytes) -> None:
        self._text_now(self.render_frame(frame))

    async def send_frame(self, frame: bytes) -> None:
        await self._send_text(self.render_frame(frame))

    def mark_now(self, name: str) -> None:
        self._text_now(self.render_mark(name))

    async def send_mark(self, name: str) -> None:
        await self._send_text(self.render_mark(name))

    @abc.abstractmethod
    def render_frame(self, frame: bytes) -> str:
        """One frame of audio as the provider's message."""

    @abc.abstractmethod
    def render_mark(self, name: str) -> str:
        """A mark (checkpoint) as the provider's message."""


class TelnyxSocket(JsonStreamSocket):
    """Telnyx media streaming (bidirectional RTP mode): JSON text frames, base64 8 kHz G.711."""

    name = "telnyx"
    audio_format = TELNYX_FORMAT
    echoes_marks = True
    opening = frozenset({"connected"})

    def parse_message(self, text: str) -> MediaMessage:
        return telnyx_media.parse_telnyx_message(text)

    def kind_of(self, parsed: MediaMessage) -> tuple[str, Any]:
        if parsed.event == "error":
            return BAD, f"telnyx reported an error: {parsed.name}"
        return super().kind_of(parsed)

    def render_frame(self, frame: bytes) -> str:
        return telnyx_media.render_media(frame)

    def render_mark(self, name: str) -> str:
        return telnyx_media.render_mark(name)

    async def send_clear(self) -> None:
        await self._send_text(telnyx_media.CLEAR_MESSAGE)


class PlivoSocket(JsonStreamSocket):
    """Plivo audio streaming (`<Stream bidirectional="true">`): JSON text frames, base64 8 kHz mu-law.

    `upgrade_headers`: the upgrade request's headers, where the stream token is looked for
    when `start.extra_headers` does not carry it.
    """

    name = "plivo"
    audio_format = PLIVO_FORMAT
    echoes_marks = True

    def __init__(
        self,
        receive: Receive,
        send: Send,
        upgrade_headers: dict[str, str] | None = None,
        *,
        wire: PushWire | None = None,
    ) -> None:
        super().__init__(receive, send, wire=wire)
        self.upgrade_headers = upgrade_headers or {}

    def parse_message(self, text: str) -> MediaMessage:
        return plivo_media.parse_plivo_message(text)

    def started(self, start: MediaMessage) -> StreamStart:
        if "stream_token" not in start.parameters:
            token = plivo_media.stream_token(self.upgrade_headers)
            if token is not None:
                start.parameters["stream_token"] = token
        return super().started(start)

    def kind_of(self, parsed: MediaMessage) -> tuple[str, Any]:
        if parsed.event == "playedStream":
            return MARK, parsed.name
        return super().kind_of(parsed)

    def render_frame(self, frame: bytes) -> str:
        return plivo_media.render_play_audio(frame)

    def render_mark(self, name: str) -> str:
        return plivo_media.render_checkpoint(self.stream_id or "", name)

    async def send_clear(self) -> None:
        await self._send_text(plivo_media.render_clear(self.stream_id or ""))


class VonageSocket(ProviderSocket):
    """Vonage Voice WebSocket: binary 16-bit PCM frames, JSON text events."""

    name = "vonage"
    audio_format = VONAGE_FORMAT
    echoes_marks = False

    async def handshake(self) -> StreamStart:
        message = await self._receive_message()
        if message["type"] == "websocket.disconnect":
            raise HandshakeError(_before("websocket:connected", message), 1000)
        text = message.get("text")
        if text is None:
            raise HandshakeError("binary frame before websocket:connected: not a Vonage media socket")
        try:
            parsed = vonage_media.parse_vonage_text(text)
        except vonage_media.VonageMessageError as exc:
            raise HandshakeError(f"not a Vonage media socket: {exc}") from None
        if parsed.event != "websocket:connected":
            raise HandshakeError(f"expected websocket:connected, got {parsed.event[:32]!r}")
        if parsed.sample_rate is not None and parsed.sample_rate != self.audio_format.sample_rate:
            self.audio_format = AudioFormat("pcm16", parsed.sample_rate)
        token = parsed.fields.get("stream_token")
        return StreamStart(None, token if isinstance(token, str) else None, None, parsed.fields)

    def parse(self, text: str | None, data: bytes | None) -> tuple[str, Any]:
        if data is not None:
            if len(data) > MAX_MESSAGE_BYTES:
                return BAD, f"binary message of {len(data)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"
            return AUDIO, data
        try:
            parsed = vonage_media.parse_vonage_text(text or "")
        except vonage_media.VonageMessageError as exc:
            return BAD, str(exc)
        if parsed.event == "websocket:dtmf":
            return DTMF, parsed.digit
        return OTHER, parsed.event[:32]

    async def send_frame(self, frame: bytes) -> None:
        await self._send_bytes(frame)

    def frame_now(self, frame: bytes) -> None:
        self._bytes_now(frame)

    def mark_now(self, name: str) -> None:
        return None  # as send_mark

    async def send_mark(self, name: str) -> None:
        return None  # Vonage has no mark echo; the session times marks by its own playhead

    async def send_clear(self) -> None:
        await self._send_text(vonage_media.CLEAR_MESSAGE)
