"""Twilio Media Streams framing: the JSON text messages on a `<Connect><Stream>` socket. Pure.

Inbound: `connected`, `start`, `media` (base64 8 kHz mu-law), `dtmf`, `mark`, `stop`.
Outbound: `media`, `mark`, `clear`, text frames only, each naming the stream's `streamSid`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError
from gateway.providers.base import BadRequest, check_json_tree

MAX_MESSAGE_CHARS = 64 * 1024
_STREAM_SID = re.compile(r"^[A-Za-z0-9]{1,64}$")
# A `media` message exactly as Twilio writes it (compact, in this key order). Text matching this
# is valid JSON whose meaning is plain, so it skips `json.loads`; anything else takes the full path.
_MEDIA = re.compile(
    r'\{"event":"media","sequenceNumber":"\d{1,12}","media":\{"track":"([a-z_]{1,32})","chunk":"\d{1,12}",'
    r'"timestamp":"\d{1,15}","payload":"([A-Za-z0-9+/]*={0,2})"\},"streamSid":"([A-Za-z0-9]{1,64})"\}'
)


class StreamMessageError(GatewayError, ValueError):
    """A message that is not a valid Twilio stream message; str() says why."""


@dataclass(slots=True)
class StreamMessage:
    """One inbound message, normalized. `audio` is raw mu-law for `media`."""

    event: str
    stream_sid: str | None = None
    audio: bytes | None = None
    track: str | None = None
    digit: str | None = None
    name: str | None = None
    call_sid: str | None = None
    custom_parameters: dict[str, str] = field(default_factory=dict)
    media_format: dict[str, Any] = field(default_factory=dict)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StreamMessageError(f"{what} must be an object")
    return value


def parse_media(text: str) -> tuple[str, bytes] | None:
    """(track, audio) of a `media` message written exactly as Twilio writes it; None for
    anything else, which `parse_stream_message` then reads in full. The hot path: no JSON
    parse, no message object. The caller checks the size limit first."""
    match = _MEDIA.fullmatch(text)
    if match is None:
        return None
    try:
        return match.group(1), binascii.a2b_base64(match.group(2), strict_mode=True)
    except binascii.Error:
        return None  # odd padding: let the full path decide, exactly as it always has


def parse_stream_message(text: str) -> StreamMessage:
    """Parse one text frame; `StreamMessageError` for anything malformed."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise StreamMessageError(f"message of {len(text)} characters is over the {MAX_MESSAGE_CHARS} limit")
    fast = parse_media(text)
    if fast is not None:
        return StreamMessage("media", _MEDIA.fullmatch(text).group(3), audio=fast[1], track=fast[0])  # type: ignore[union-attr]
    return _parse_json(text)


def _parse_json(text: str) -> StreamMessage:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise StreamMessageError("message is not valid JSON") from None
    data = _object(data, "message")
    try:
        check_json_tree(data)
    except BadRequest as exc:
        raise StreamMessageError(str(exc)) from None
    event = data.get("event")
    if not isinstance(event, str):
        raise StreamMessageError("message has no event name")
    sid = data.get("streamSid")
    if sid is not None and not isinstance(sid, str):
        raise StreamMessageError("streamSid must be a string")
    if event == "media":
        media = _object(data.get("media"), "media")
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise StreamMessageError("media.payload must be a base64 string")
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise StreamMessageError("media.payload is not valid base64") from None
        track = media.get("track")
        return StreamMessage(event, sid, audio=audio, track=track if isinstance(track, str) else None)
    if event == "start":
        start = _object(data.get("start"), "start")
        sid = sid or start.get("streamSid")
        if not isinstance(sid, str) or not _STREAM_SID.match(sid):
            raise StreamMessageError("start has no valid streamSid")
        params = start.get("customParameters") or {}
        params = _object(params, "start.customParameters")
        call_sid = start.get("callSid")
        media_format = start.get("mediaFormat") or {}
        return StreamMessage(
            event,
            sid,
            call_sid=call_sid if isinstance(call_sid, str) else None,
            custom_parameters={str(k): str(v) for k, v in params.items()},
            media_format=media_format if isinstance(media_format, dict) else {},
        )
    if event == "dtmf":
        digit = _object(data.get("dtmf"), "dtmf").get("digit")
        if not isinstance(digit, str) or not digit or len(digit) > 4:
            raise StreamMessageError("dtmf.digit must be a short string")
        return StreamMessage(event, sid, digit=digit)
    if event == "mark":
        name = _object(data.get("mark"), "mark").get("name")
        if not isinstance(name, str):
            raise StreamMessageError("mark.name must be a string")
        return StreamMessage(event, sid, name=name)
    return StreamMessage(event, sid)


def render_media(stream_sid: str, mulaw: bytes) -> str:
    """An outbound `media` message (the stream sid was checked at `start`)."""
    return media_renderer(stream_sid)(mulaw).decode("ascii")


def media_renderer(stream_sid: str) -> Callable[[bytes], bytes]:
    """`render_media` for one stream, as UTF-8 bytes (what a socket sends): the constant parts
    are made once, each frame costs one base64 and one join."""
    head = ('{"event":"media","streamSid":"' + stream_sid + '","media":{"payload":"').encode("ascii")
    b2a, tail = binascii.b2a_base64, b'"}}'

    def render(mulaw: bytes) -> bytes:
        return b"".join((head, b2a(mulaw, newline=False), tail))

    return render


def render_mark(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def render_clear(stream_sid: str) -> str:
    return '{"event":"clear","streamSid":"' + stream_sid + '"}'
