"""Plivo audio-stream framing: the JSON text messages of a bidirectional `<Stream>`. Pure.

Inbound (no `connected`; `start` comes first): `start` (`start.streamId`, `start.callId`,
`start.mediaFormat`, top-level `extra_headers`), `media` (base64 payload), `dtmf`,
`playedStream` (a checkpoint's audio has played; a support page calls it `played`: both are
read), `clearedAudio`, and `stop` if it ever comes (undocumented; the socket's close is the
documented end). Outbound: `playAudio`, `checkpoint`, `clearAudio`.
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
)
from gateway.providers.plivo import TOKEN_HEADER, decode_token

ENCODINGS = {"audio/x-mulaw": "mulaw"}  # at 8000 Hz; audio/x-l16 is not offered (byte order undocumented)
PLAYED = frozenset({"playedStream", "played"})


class PlivoMessageError(MediaMessageError):
    """A message that is not a valid Plivo audio-stream message."""


def parse_extra_headers(value: str | None) -> dict[str, str]:
    """`extra_headers` as {name: value}: `k=v` pairs split on `;` or `,` (the docs show both)."""
    pairs: dict[str, str] = {}
    for part in (value or "").replace(",", ";").split(";"):
        name, sep, item = part.partition("=")
        if sep and name.strip():
            pairs[name.strip()] = item.strip()
    return pairs


def stream_token(headers: dict[str, str]) -> str | None:
    """The gateway's stream token from extra headers (the name compared without case; Plivo
    may prefix it, so any name ending in it counts)."""
    for name, value in headers.items():
        if name.lower().endswith(TOKEN_HEADER):
            return decode_token(value)
    return None


def parse_plivo_message(text: str) -> MediaMessage:
    """Parse one text frame; `PlivoMessageError` for anything malformed."""
    data, event = load_message(text, PlivoMessageError)
    stream_id = optional_text(data.get("streamId"), "streamId", PlivoMessageError)
    if event == "media":
        return media_message(data, stream_id, PlivoMessageError)
    if event == "start":
        start = need_object(data.get("start"), "start", PlivoMessageError)
        stream_id = optional_text(start.get("streamId"), "start.streamId", PlivoMessageError) or stream_id
        if not stream_id:
            raise PlivoMessageError("start has no streamId")
        media_format = need_object(start.get("mediaFormat") or {}, "start.mediaFormat", PlivoMessageError)
        encoding = optional_text(media_format.get("encoding"), "start.mediaFormat.encoding", PlivoMessageError, 64)
        if encoding is not None and encoding.split(";")[0].strip().lower() not in ENCODINGS:
            raise PlivoMessageError(f"start.mediaFormat.encoding {encoding[:64]!r} is not audio/x-mulaw")
        rate = media_format.get("sampleRate")
        if rate is not None and rate not in (8000, "8000"):
            raise PlivoMessageError("start.mediaFormat.sampleRate must be 8000")
        headers = parse_extra_headers(
            optional_text(data.get("extra_headers"), "extra_headers", PlivoMessageError, 2048)
        )
        token = stream_token(headers)
        parameters = {k: v for k, v in headers.items() if not k.lower().endswith(TOKEN_HEADER)}
        if token is not None:
            parameters["stream_token"] = token
        return MediaMessage(
            event,
            stream_id,
            encoding="mulaw",
            sample_rate=8000,
            parameters=parameters,
            call_id=optional_text(start.get("callId"), "start.callId", PlivoMessageError),
        )
    if event == "dtmf":
        return dtmf_message(data, stream_id, PlivoMessageError)
    if event in PLAYED:
        name = data.get("name")
        if not isinstance(name, str):
            raise PlivoMessageError(f"{event}.name must be a string")
        return MediaMessage("playedStream", stream_id, name=name)
    return MediaMessage(event, stream_id)


def render_play_audio(frame: bytes) -> str:
    """An outbound `playAudio` carrying one frame of 8 kHz mu-law (the `<Stream contentType>`)."""
    payload = binascii.b2a_base64(frame, newline=False).decode("ascii")
    return '{"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"' + payload + '"}}'


def render_checkpoint(stream_id: str, name: str) -> str:
    return json.dumps({"event": "checkpoint", "streamId": stream_id, "name": name})


def render_clear(stream_id: str) -> str:
    return json.dumps({"event": "clearAudio", "streamId": stream_id})
