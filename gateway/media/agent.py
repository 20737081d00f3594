"""The gateway's end of a call's link to its voice agent (see docs/agent-protocol.md).

`WebSocketAgentLink` talks to an agent server over `ws://`/`wss://`; `TwilioAgentLink` to one
that speaks Twilio Media Streams (`agent.protocol: twilio`); `EchoAgentLink` is the built-in agent
that plays the caller's audio back, behind the same interface.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import websockets

from gateway import jsontext
from gateway.errors import GatewayError
from gateway.media.agent_socket import AgentSocket, SocketClosed
from gateway.media.twilio_agent import PLACEHOLDER_ACCOUNT_SID, AgentMessageError, TwilioAgentProtocol
from gateway.redact import Redactor, header_secrets, redact_url, url_secrets

__all__ = [
    "AgentLink",
    "AgentMessageError",
    "AgentProtocol",
    "AgentUnavailable",
    "EchoAgentLink",
    "TwilioAgentLink",
    "WebSocketAgentLink",
    "agent_link_for",
]


class AgentProtocol(enum.StrEnum):
    """What an agent server speaks: the gateway's own protocol (docs/agent-protocol.md), or
    Twilio Media Streams, for bots written against Twilio."""

    NATIVE = "native"
    TWILIO = "twilio"


class AgentUnavailable(GatewayError):
    """The agent could not be reached, or its connection ended."""


class AgentLink(abc.ABC):
    """One call's connection to its agent: audio and JSON both ways."""

    @abc.abstractmethod
    async def open(self, start: Mapping[str, Any]) -> None:
        """Connect and send the `start` message; `AgentUnavailable` on failure."""

    @abc.abstractmethod
    def send_audio(self, frame: bytes) -> None:
        """Send one frame of caller audio in the agent's format; never waits (see `congested`)."""

    @abc.abstractmethod
    async def send_message(self, message: Mapping[str, Any]) -> None:
        """Send one JSON control message."""

    @abc.abstractmethod
    def congested(self) -> bool:
        """True when the agent is not keeping up and audio should queue instead."""

    @abc.abstractmethod
    async def receive(self) -> bytes | str:
        """The next message from the agent (bytes = audio, str = JSON text); `AgentUnavailable` at the end."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the link (idempotent)."""

    def listen(self, on_message: Callable[[bytes | str], None], on_closed: Callable[[str], None]) -> bool:
        """Push mode: from now on each message goes to `on_message` as it arrives (as `receive`
        would return it) and `on_closed(reason)` is called once at the end; `receive` is not
        called again. False (nothing changes) when the link can only be read with `receive`."""
        return False

    def hold(self, held: bool) -> None:
        """Push mode: while held, no message is pushed and the link stops reading the agent once
        a few are waiting (TCP pushes back on it, as on a reader that is behind); released, what
        waited is pushed, in order. A link whose messages never wait (the echo) ignores it."""
        return None


class WebSocketAgentLink(AgentLink):
    """An agent server reached over a WebSocket (see `AgentSocket` for why not `websockets.asyncio`)."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        max_message_bytes: int = 1 << 20,
        write_limit: int = 64 * 1024,
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        # Its failures become log lines, the timeline's `agent.failed` and `call.agent_failed`:
        # the URL's and the credential headers' secrets are taken out of their text first.
        self._redactor = Redactor([*url_secrets(url), *header_secrets(self.headers)])
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.write_limit = write_limit
        self._socket: AgentSocket | None = None

    async def open(self, start: Mapping[str, Any]) -> None:
        try:
            self._socket = AgentSocket(
                self.url, max_size=self.max_message_bytes, ping_interval=20, ping_timeout=20, close_timeout=2
            )
            await self._socket.open(self.headers, timeout=self.connect_timeout, user_agent="telephony-gateway")
            for text in self._opening(start):
                self._socket.send_text(text)
        except (TimeoutError, OSError, SocketClosed, websockets.exceptions.WebSocketException) as exc:
            await self.close()
            raise self._unavailable(
                f"cannot connect to agent at {redact_url(self.url)}: {type(exc).__name__}: {exc}"
            ) from None

    def _unavailable(self, reason: str) -> AgentUnavailable:
        return AgentUnavailable(self._redactor.text(reason))

    def _opening(self, start: Mapping[str, Any]) -> list[str]:
        """The texts sent first, once connected."""
        return [json.dumps(start)]

    def send_audio(self, frame: bytes) -> None:
        try:
            self._socket.send_bytes(frame)  # type: ignore[union-attr]
        except (SocketClosed, AttributeError) as exc:
            raise self._unavailable(str(exc) or "agent link is closed") from None

    async def send_message(self, message: Mapping[str, Any]) -> None:
        try:
            self._socket.send_text(json.dumps(message))  # type: ignore[union-attr]
        except (SocketClosed, AttributeError) as exc:
            raise self._unavailable(str(exc) or "agent link is closed") from None

    def congested(self) -> bool:
        return self._socket is not None and self._socket.buffered() > self.write_limit

    async def receive(self) -> bytes | str:
        if self._socket is None:
            raise AgentUnavailable("agent link is closed")
        try:
            return await self._socket.receive()
        except SocketClosed as exc:
            raise self._unavailable(str(exc)) from None

    def listen(self, on_message: Callable[[bytes | str], None], on_closed: Callable[[str], None]) -> bool:
        if self._socket is None or type(self).receive is not WebSocketAgentLink.receive:
            return False  # a link that translates what it receives (TwilioAgentLink) is pulled
        self._socket.listen(on_message, lambda reason: on_closed(self._redactor.text(reason)))
        return True

    def hold(self, held: bool) -> None:
        if self._socket is not None:
            self._socket.hold(held)

    async def close(self) -> None:
        if self._socket is not None:
            socket, self._socket = self._socket, None
            await socket.close()


class TwilioAgentLink(WebSocketAgentLink):
    """An agent server that speaks Twilio Media Streams (`agent.protocol: twilio`): the gateway
    plays Twilio's part, translating the session's native protocol (`twilio_agent`)."""

    def __init__(
        self,
        url: str,
        *,
        account_sid: str | None = None,
        new_stream_sid: Callable[[], str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, **kwargs)
        self.account_sid = account_sid or PLACEHOLDER_ACCOUNT_SID
        self.new_stream_sid = new_stream_sid or (lambda: "MZ" + uuid.uuid4().hex)
        self.protocol: TwilioAgentProtocol | None = None

    def _opening(self, start: Mapping[str, Any]) -> list[str]:
        call = start.get("call") or {}
        stream_id = call.get("stream_id")
        self.protocol = TwilioAgentProtocol(
            stream_sid=stream_id
            if isinstance(stream_id, str) and stream_id.startswith("MZ")
            else self.new_stream_sid(),
            call_sid=str(call.get("provider_call_id") or call.get("workflow_run_id") or ""),
            account_sid=self.account_sid,
        )
        return self.protocol.opening(start)

    def send_audio(self, frame: bytes) -> None:
        try:
            self._socket.send_text(self.protocol.media(frame))  # type: ignore[union-attr]
        except (SocketClosed, AttributeError) as exc:
            raise AgentUnavailable(str(exc) or "agent link is closed") from None

    async def send_message(self, message: Mapping[str, Any]) -> None:
        if self.protocol is None:
            raise AgentUnavailable("agent link is closed")
        text = self.protocol.control(message)
        if text is None:
            return
        try:
            self._socket.send_text(text)  # type: ignore[union-attr]
        except (SocketClosed, AttributeError) as exc:
            raise AgentUnavailable(str(exc) or "agent link is closed") from None

    async def receive(self) -> bytes | str:
        message = await super().receive()
        if self.protocol is None:
            raise AgentUnavailable("agent link is closed")
        parsed = self.protocol.parse(message)  # AgentMessageError: the session counts it
        return parsed if isinstance(parsed, bytes) else jsontext.dumps(parsed)


class EchoAgentLink(AgentLink):
    """The built-in agent: everything the caller says is played back to them."""

    def __init__(self, max_backlog: int = 500) -> None:
        self._queue: asyncio.Queue[bytes | str | None] = asyncio.Queue(max_backlog)
        self._listener: tuple[Callable[[bytes | str], None], Callable[[str], None]] | None = None
        self._stopped = False

    async def open(self, start: Mapping[str, Any]) -> None:
        return None

    def send_audio(self, frame: bytes) -> None:
        if self._listener is not None:
            self._listener[0](frame)  # pushed: played back now, no queue
        elif not self._queue.full() and not self._stopped:
            self._queue.put_nowait(frame)

    def listen(self, on_message: Callable[[bytes | str], None], on_closed: Callable[[str], None]) -> bool:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                on_closed("echo agent stopped")
                return True
            on_message(item)
        if self._stopped:
            on_closed("echo agent stopped")
        else:
            self._listener = (on_message, on_closed)
        return True

    async def send_message(self, message: Mapping[str, Any]) -> None:
        if message.get("type") == "stop":
            await self.close()

    def congested(self) -> bool:
        return self._queue.full()

    async def receive(self) -> bytes | str:
        item = await self._queue.get()
        if item is None:
            raise AgentUnavailable("echo agent stopped")
        return item

    async def close(self) -> None:
        if self._listener is not None:
            _, on_closed = self._listener
            self._listener = None
            self._stopped = True
            on_closed("echo agent stopped")
            return
        if self._stopped:
            return
        while self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)


def agent_link_for(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float = 5.0,
    protocol: AgentProtocol = AgentProtocol.NATIVE,
    account_sid: str | None = None,
) -> AgentLink:
    """The link named by `agent.url`: `echo`, or a WebSocket URL speaking `protocol`."""
    if url == "echo":
        return EchoAgentLink()
    if protocol is AgentProtocol.TWILIO:
        return TwilioAgentLink(url, headers=headers, connect_timeout=connect_timeout, account_sid=account_sid)
    return WebSocketAgentLink(url, headers=headers, connect_timeout=connect_timeout)
