"""What the JSON media-stream parsers (Telnyx, Plivo) share: one message type, the checks. Pure.

Each provider module raises its own subclass of `MediaMessageError`; every malformed input
becomes that error with a reason naming the field, never another exception.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError
from gateway.providers.base import BadRequest, check_json_tree

MAX_MESSAGE_CHARS = 64 * 1024  # Plivo's documented WebSocket message limit; Telnyx's frames are smaller
_DIGIT = re.compile(r"[0-9*#A-Da-d]")


class MediaMessageError(GatewayError, ValueError):
    """A message that is not a valid media-stream message; str() says why."""


@dataclass(slots=True)
class MediaMessage:
    """One inbound message, normalized. `audio` is the raw payload of a `media` message."""

    event: str
    stream_id: str | None = None
    audio: bytes | None = None
    track: str | None = None
    digit: str | None = None
    name: str | None = None
    call_id: str | None = None
    encoding: str | None = None
    sample_rate: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)


def load_message(text: Any, error: type[MediaMessageError]) -> tuple[dict[str, Any], str]:
    """(the JSON object, its `event`) of one text frame; `error` when it is not one."""
    if not isinstance(text, str):
        raise error("message must be a text frame")
    if len(text) > MAX_MESSAGE_CHARS:
        raise error(f"message of {len(text)} characters is over the {MAX_MESSAGE_CHARS} limit")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise error("message is not valid JSON") from None
    data = need_object(data, "message", error)
    try:
        check_json_tree(data)  # nesting, and lone surrogates the store could not write
    except BadRequest as exc:
        raise error(str(exc)) from None
    event = data.get("event")
    if not isinstance(event, str) or not event:
        raise error("message has no event name")
    return data, event


def need_object(value: Any, what: str, error: type[MediaMessageError]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise error(f"{what} must be an object")
    return value


def optional_text(value: Any, what: str, error: type[MediaMessageError], limit: int = 256) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise error(f"{what} must be a string of at most {limit} characters")
    return value


def audio_payload(media: dict[str, Any], error: type[MediaMessageError]) -> bytes:
    """The decoded `media.payload` (strict base64)."""
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise error("media.payload must be a base64 string")
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise error("media.payload is not valid base64") from None


def dtmf_digit(value: Any, error: type[MediaMessageError]) -> str:
    """One DTMF key: 0-9, *, #, A-D."""
    if not isinstance(value, str) or not _DIGIT.fullmatch(value):
        raise error("dtmf.digit must be one of 0-9 * # A-D")
    return value.upper()


def text_map(value: Any, what: str, error: type[MediaMessageError]) -> dict[str, str]:
    """A JSON object of parameters as {str: str} (non-text values as their JSON)."""
    if value is None:
        return {}
    value = need_object(value, what, error)
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def media_message(data: dict[str, Any], stream_id: str | None, error: type[MediaMessageError]) -> MediaMessage:
    """A `media` message: `media.payload` decoded, `media.track` kept."""
    media = need_object(data.get("media"), "media", error)
    track = optional_text(media.get("track"), "media.track", error, 32)
    return MediaMessage("media", stream_id, audio=audio_payload(media, error), track=track)


def dtmf_message(data: dict[str, Any], stream_id: str | None, error: type[MediaMessageError]) -> MediaMessage:
    """A `dtmf` message: `dtmf.digit` checked."""
    digit = need_object(data.get("dtmf"), "dtmf", error).get("digit")
    return MediaMessage("dtmf", stream_id, digit=dtmf_digit(digit, error))
