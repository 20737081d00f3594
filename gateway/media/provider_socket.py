"""The provider's side of a media session: one adapter per provider over the ASGI socket.

Each adapter turns the provider's messages into a few inbound kinds (audio, dtmf, mark,
stop, bad) and sends frames, marks and clears exactly as that provider accepts them. It
works on the connection's raw ASGI `receive`/`send` (no per-message Starlette wrapper, which
costs more than the check it adds), so it keeps the one state that matters itself: once the
provider has gone, sends are dropped and the next `receive` says STOP.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.audio import PLIVO_FORMAT, TELNYX_FORMAT, TWILIO_FORMAT, VONAGE_FORMAT, AudioFormat
from gateway.providers import plivo_media, telnyx_media, twilio_media, vonage_media
from gateway.providers.media_json import MediaMessage, MediaMessageError

log = logging.getLogger("gateway.media")

AUDIO, DTMF, MARK, STOP, BAD, OTHER = "audio", "dtmf", "mark", "stop", "bad", "other"
_INBOUND = frozenset({"inbound", "inbound_track"})  # the caller's track (Twilio may omit it: full path)
MAX_MESSAGE_BYTES = 64 * 1024


class HandshakeError(Exception):
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


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ProviderSocket(abc.ABC):
    """A provider's media socket, as the session sees it."""

    name: str
    audio_format: AudioFormat
    echoes_marks: bool  # True: the provider reports when a mark's audio has played

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.stream_id: str | None = None
        self.peer_closed = False  # the provider's side is gone: nothing more to send or read

    @abc.abstractmethod
    async def handshake(self) -> StreamStart:
        """Read the opening messages (no audio) up to the one carrying the stream token."""

    @abc.abstractmethod
    async def receive(self) -> tuple[str, Any]:
        """The next inbound item: (AUDIO, bytes) (DTMF, digit) (MARK, name) (STOP, reason) (BAD, reason) (OTHER, name)."""

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
                raise HandshakeError("socket closed before start", 1000)
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

    async def _receive_message(self) -> dict[str, Any]:
        if self.peer_closed:
            return {"type": "websocket.disconnect", "code": 1006}
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self.peer_closed = True
        return message

    async def _send_message(self, message: dict[str, Any]) -> None:
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

    async def receive(self) -> tuple[str, Any]:
        message = await self._receive_message()
        text = message.get("text")
        if text is None:
            if message["type"] == "websocket.disconnect":
                return STOP, f"socket closed ({message.get('code', 1005)})"
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
        await self._send_message({"type": "websocket.send", "text": twilio_media.render_media(self.stream_id, frame)})

    async def send_mark(self, name: str) -> None:
        await self._send_message({"type": "websocket.send", "text": twilio_media.render_mark(self.stream_id, name)})

    async def send_clear(self) -> None:
        await self._send_message({"type": "websocket.send", "text": twilio_media.render_clear(self.stream_id)})


class JsonStreamSocket(ProviderSocket):
    """A provider whose stream is JSON text frames parsed into `MediaMessage`s (Telnyx, Plivo).

    Subclasses name the parser, the opening events to skip and the renderers.
    """

    opening: frozenset[str] = frozenset()

    @abc.abstractmethod
    def parse(self, text: str) -> MediaMessage:
        """One inbound text frame; `MediaMessageError` when malformed."""

    def started(self, start: MediaMessage) -> StreamStart:
        """Take the stream's format and ids from its `start` message."""
        self.stream_id = start.stream_id
        if start.encoding is not None and start.sample_rate is not None:
            self.audio_format = AudioFormat(start.encoding, start.sample_rate)  # type: ignore[arg-type]
        return StreamStart(start.stream_id, start.parameters.get("stream_token"), start.call_id, dict(start.parameters))

    async def handshake(self) -> StreamStart:
        return self.started(await self._read_start(self.parse, MediaMessageError, self.opening, self.name.capitalize()))

    async def receive(self) -> tuple[str, Any]:
        message = await self._receive_message()
        if message["type"] == "websocket.disconnect":
            return STOP, f"socket closed ({message.get('code', 1005)})"
        text = message.get("text")
        if text is None:
            return BAD, f"binary frame on a {self.name} stream"
        try:
            parsed = self.parse(text)
        except MediaMessageError as exc:
            return BAD, str(exc)
        return self.kind_of(parsed)

    def kind_of(self, parsed: MediaMessage) -> tuple[str, Any]:
        """The inbound kind of a parsed message (subclasses add their own events)."""
        return classify(parsed)

    async def _send_text(self, text: str) -> None:
        await self._send_message({"type": "websocket.send", "text": text})


class TelnyxSocket(JsonStreamSocket):
    """Telnyx media streaming (bidirectional RTP mode): JSON text frames, base64 8 kHz G.711."""

    name = "telnyx"
    audio_format = TELNYX_FORMAT
    echoes_marks = True
    opening = frozenset({"connected"})

    def parse(self, text: str) -> MediaMessage:
        return telnyx_media.parse_telnyx_message(text)

    def kind_of(self, parsed: MediaMessage) -> tuple[str, Any]:
        if parsed.event == "error":
            return BAD, f"telnyx reported an error: {parsed.name}"
        return super().kind_of(parsed)

    async def send_frame(self, frame: bytes) -> None:
        await self._send_text(telnyx_media.render_media(frame))

    async def send_mark(self, name: str) -> None:
        await self._send_text(telnyx_media.render_mark(name))

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

    def __init__(self, receive: Receive, send: Send, upgrade_headers: dict[str, str] | None = None) -> None:
        super().__init__(receive, send)
        self.upgrade_headers = upgrade_headers or {}

    def parse(self, text: str) -> MediaMessage:
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

    async def send_frame(self, frame: bytes) -> None:
        await self._send_text(plivo_media.render_play_audio(frame))

    async def send_mark(self, name: str) -> None:
        await self._send_text(plivo_media.render_checkpoint(self.stream_id or "", name))

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
            raise HandshakeError("socket closed before websocket:connected", 1000)
        text = message.get("text")
        if text is None:
            raise HandshakeError("binary frame before websocket:connected: not a Vonage media socket")
        try:
            parsed = vonage_media.parse_vonage_text(text)
        except vonage_media.VonageMessageError as exc:
            raise HandshakeError(f"not a Vonage media socket: {exc}") from None
        if parsed.event != "websocket:connected":
            raise HandshakeError(f"expected websocket:connected, got {parsed.event[:32]!r}")
        if parsed.sample_rate != self.audio_format.sample_rate:
            self.audio_format = AudioFormat("pcm16", parsed.sample_rate)
        token = parsed.fields.get("stream_token")
        return StreamStart(None, token if isinstance(token, str) else None, None, parsed.fields)

    async def receive(self) -> tuple[str, Any]:
        message = await self._receive_message()
        if message["type"] == "websocket.disconnect":
            return STOP, f"socket closed ({message.get('code', 1005)})"
        data = message.get("bytes")
        if data is not None:
            if len(data) > MAX_MESSAGE_BYTES:
                return BAD, f"binary message of {len(data)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"
            return AUDIO, data
        try:
            parsed = vonage_media.parse_vonage_text(message.get("text") or "")
        except vonage_media.VonageMessageError as exc:
            return BAD, str(exc)
        if parsed.event == "websocket:dtmf":
            return DTMF, parsed.digit
        return OTHER, parsed.event[:32]

    async def send_frame(self, frame: bytes) -> None:
        await self._send_message({"type": "websocket.send", "bytes": frame})

    async def send_mark(self, name: str) -> None:
        return None  # Vonage has no mark echo; the session times marks by its own playhead

    async def send_clear(self) -> None:
        await self._send_message({"type": "websocket.send", "text": vonage_media.CLEAR_MESSAGE})
