"""`agent.protocol: twilio`: the gateway speaks Twilio Media Streams to the voice agent. Pure.

Most bots that take phone calls (Pipecat's `TwilioFrameSerializer`, the OpenAI Realtime,
Deepgram and ElevenLabs Twilio samples) are servers for Twilio Media Streams. With this protocol
the gateway plays Twilio's part towards such a bot, for every provider's calls: a Twilio-only
bot takes Vonage (and other carriers') calls unchanged. The session keeps speaking the native
agent protocol (docs/agent-protocol.md); `TwilioAgentProtocol` translates both ways:

| native (session)                      | Twilio Media Streams (bot)                                   |
|---------------------------------------|--------------------------------------------------------------|
| `start`                               | `connected`, then `start` (`streamSid`, `callSid`,           |
|                                       | `accountSid`, `tracks`, `customParameters`, `mediaFormat`)   |
| caller audio (mu-law 8 kHz, 20 ms)    | `media` (`track` inbound, `chunk`, `timestamp`, base64)      |
| `dtmf`                                | `dtmf` (`track` inbound_track, `digit`)                      |
| `mark` (played, or dropped by clear)  | `mark` (Twilio echoes a mark in both cases)                  |
| `stop`                                | `stop` (`accountSid`, `callSid`)                             |
| audio (bytes, any length)             | <- `media` (base64 mu-law, any length)                       |
| `{"type":"mark","name":N}`            | <- `mark`                                                    |
| `{"type":"clear"}`                    | <- `clear`                                                   |

Every message carries the string `sequenceNumber` Twilio sends (from "1" on `start`; `connected`
has none), and `media.timestamp` counts milliseconds of caller audio since the stream started.
`customParameters` (strings, as Twilio's `<Parameter>`s are) carry the call's ids, `from`, `to`,
`provider`, `direction` and `initial_context` (as JSON text). The bot's messages are checked as
Twilio checks them: JSON text, a known `event`, the right `streamSid`; anything else raises
`AgentMessageError` naming what was wrong (the session counts and logs it; the call goes on).
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

from gateway import jsontext
from gateway.errors import GatewayError

MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
FRAME_MS = 20
MAX_MESSAGE_CHARS = 1 << 20
PLACEHOLDER_ACCOUNT_SID = "AC" + "0" * 32
"""`accountSid` for calls that did not come through a Twilio account (no Twilio credentials)."""


class AgentMessageError(GatewayError, ValueError):
    """A message from the agent that the protocol refuses; the text says what was wrong."""


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else jsontext.dumps(value)


def custom_parameters(start: Mapping[str, Any]) -> dict[str, str]:
    """The `customParameters` of the Twilio `start` for the session's native `start` message."""
    call = start.get("call") or {}
    keys = ("workflow_run_id", "workflow_id", "user_id", "provider", "provider_call_id", "from", "to", "direction")
    params = {key: _text(call.get(key)) for key in keys}
    params["initial_context"] = _text(start.get("initial_context") or {})
    return params


class TwilioAgentProtocol:
    """One call's Twilio Media Streams conversation with a bot, seen from Twilio's side."""

    def __init__(self, *, stream_sid: str, call_sid: str, account_sid: str = PLACEHOLDER_ACCOUNT_SID) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self._sequence = 0
        self._chunk = 0

    def _next(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    def _message(self, event: str, body: dict[str, Any]) -> str:
        return jsontext.dumps({"event": event, "sequenceNumber": self._next(), **body, "streamSid": self.stream_sid})

    # -- gateway -> bot ---------------------------------------------------------------------
    def opening(self, start: Mapping[str, Any]) -> list[str]:
        """`connected` and `start`, for the session's native `start` message."""
        connected = jsontext.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        body = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": custom_parameters(start),
            "mediaFormat": MEDIA_FORMAT,
        }
        return [connected, self._message("start", {"start": body})]

    def media(self, mulaw: bytes) -> str:
        """One frame of the caller's audio (mu-law 8 kHz) as a `media` message."""
        self._chunk += 1
        payload = binascii.b2a_base64(mulaw, newline=False).decode("ascii")
        media = {
            "track": "inbound",
            "chunk": str(self._chunk),
            "timestamp": str((self._chunk - 1) * FRAME_MS),
            "payload": payload,
        }
        return self._message("media", {"media": media})

    def control(self, message: Mapping[str, Any]) -> str | None:
        """The Twilio message for one of the session's native control messages (None: Twilio has none)."""
        kind = message.get("type")
        if kind == "dtmf":
            return self._message("dtmf", {"dtmf": {"track": "inbound_track", "digit": str(message.get("digit", ""))}})
        if kind == "mark":
            return self._message("mark", {"mark": {"name": str(message.get("name", ""))}})
        if kind == "stop":
            return self._message("stop", {"stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
        return None

    # -- bot -> gateway ---------------------------------------------------------------------
    def parse(self, data: bytes | str) -> bytes | dict[str, Any]:
        """A bot's message: mu-law audio (bytes) for `media`, the native control message for
        `mark` and `clear`. `AgentMessageError` for anything Twilio would refuse."""
        if isinstance(data, bytes):
            raise AgentMessageError("binary frames are not Twilio Media Streams messages (send JSON text)")
        if len(data) > MAX_MESSAGE_CHARS:
            raise AgentMessageError(f"message of {len(data)} characters is over the limit")
        try:
            message = jsontext.loads(data)
        except (ValueError, RecursionError):
            raise AgentMessageError("message is not valid JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            raise AgentMessageError("message is not an object with an event")
        event = message["event"]
        if event not in ("media", "mark", "clear"):
            raise AgentMessageError(f"unknown event {event[:40]!r} (a bot may send media, mark and clear)")
        sid = message.get("streamSid")
        if sid != self.stream_sid:
            raise AgentMessageError(f"{event} names streamSid {str(sid)[:40]!r}, not this stream's")
        if event == "clear":
            return {"type": "clear"}
        if event == "mark":
            mark = message.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str) or not name:
                raise AgentMessageError("mark needs mark.name")
            return {"type": "mark", "name": name}
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            raise AgentMessageError("media needs media.payload (base64 mu-law)")
        try:
            return binascii.a2b_base64(payload.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            raise AgentMessageError("media.payload is not base64") from None
