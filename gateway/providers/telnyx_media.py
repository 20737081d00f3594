"""Telnyx media streaming framing: the JSON text messages of a bidirectional RTP stream. Pure.

Inbound: `connected`, `start` (`stream_id` at the top, `start.custom_parameters`,
`start.media_format.encoding` PCMU/PCMA), `media` (base64 RTP payload, no header), `dtmf`,
`mark`, `error`, `stop`. Outbound: `media` (`{"event":"media","media":{"payload":...}}`),
`mark`, `clear` — no stream id needed, as Telnyx's guide shows them.
"""

from __future__ import annotations

import binascii
import json

from gateway.providers.media_json import (
    MediaMessage,
    MediaMessageError,
    dtmf_message,
    load_message,
    media_message,
    need_object,
    optional_text,
    text_map,
)

ENCODINGS = {"PCMU": "mulaw", "PCMA": "alaw"}  # Telnyx codec -> gateway encoding (8 kHz)
CLEAR_MESSAGE = '{"event":"clear"}'


class TelnyxMessageError(MediaMessageError):
    """A message that is not a valid Telnyx media-stream message."""


def parse_telnyx_message(text: str) -> MediaMessage:
    """Parse one text frame; `TelnyxMessageError` for anything malformed."""
    data, event = load_message(text, TelnyxMessageError)
    stream_id = optional_text(data.get("stream_id"), "stream_id", TelnyxMessageError)
    if event == "media":
        return media_message(data, stream_id, TelnyxMessageError)
    if event == "start":
        if not stream_id:
            raise TelnyxMessageError("start has no stream_id")
        start = need_object(data.get("start"), "start", TelnyxMessageError)
        media_format = need_object(start.get("media_format") or {}, "start.media_format", TelnyxMessageError)
        encoding = optional_text(media_format.get("encoding"), "start.media_format.encoding", TelnyxMessageError, 32)
        if encoding is not None and encoding.upper() not in ENCODINGS:
            raise TelnyxMessageError(f"start.media_format.encoding {encoding[:32]!r} is not PCMU or PCMA")
        rate = media_format.get("sample_rate")
        if rate is not None and rate not in (8000, "8000"):
            raise TelnyxMessageError("start.media_format.sample_rate must be 8000")
        return MediaMessage(
            event,
            stream_id,
            call_id=optional_text(start.get("call_control_id"), "start.call_control_id", TelnyxMessageError),
            encoding=ENCODINGS[encoding.upper()] if encoding else None,
            sample_rate=8000,
            parameters=text_map(start.get("custom_parameters"), "start.custom_parameters", TelnyxMessageError),
        )
    if event == "dtmf":
        return dtmf_message(data, stream_id, TelnyxMessageError)
    if event == "mark":
        name = need_object(data.get("mark"), "mark", TelnyxMessageError).get("name")
        if not isinstance(name, str):
            raise TelnyxMessageError("mark.name must be a string")
        return MediaMessage(event, stream_id, name=name)
    if event == "error":
        payload = data.get("payload")
        detail = json.dumps(payload)[:200] if payload is not None else ""
        return MediaMessage(event, stream_id, name=detail)
    return MediaMessage(event, stream_id)


def render_media(frame: bytes) -> str:
    """An outbound `media` message carrying one frame of raw RTP payload."""
    return '{"event":"media","media":{"payload":"' + binascii.b2a_base64(frame, newline=False).decode("ascii") + '"}}'


def render_mark(name: str) -> str:
    return json.dumps({"event": "mark", "mark": {"name": name}})
