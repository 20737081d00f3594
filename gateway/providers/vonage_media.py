"""Vonage Voice WebSocket framing: binary 16-bit linear PCM frames and JSON text events. Pure.

The first text message is `websocket:connected` with the NCCO endpoint's `headers` flattened
to its top level; later ones are `websocket:dtmf`, `websocket:cleared`, `websocket:notify`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError
from gateway.providers.base import BadRequest, check_json_tree

MAX_TEXT_CHARS = 16 * 1024
CLEAR_MESSAGE = '{"action":"clear"}'
_RATE = re.compile(r"^audio/l16;\s*rate=(8000|16000|24000)$")


class VonageMessageError(GatewayError, ValueError):
    """A text message that is not a valid Vonage WebSocket event; str() says why."""


@dataclass(slots=True)
class VonageEvent:
    """One text event, normalized."""

    event: str
    sample_rate: int | None = None
    digit: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def parse_vonage_text(text: str) -> VonageEvent:
    """Parse one text frame; `VonageMessageError` for anything malformed."""
    if len(text) > MAX_TEXT_CHARS:
        raise VonageMessageError(f"text message of {len(text)} characters is over the {MAX_TEXT_CHARS} limit")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise VonageMessageError("text message is not valid JSON") from None
    if not isinstance(data, dict):
        raise VonageMessageError("text message must be a JSON object")
    try:
        check_json_tree(data)
    except BadRequest as exc:
        raise VonageMessageError(str(exc)) from None
    event = data.get("event")
    if not isinstance(event, str):
        raise VonageMessageError("text message has no event name")
    if event == "websocket:connected":
        content_type = data.get("content-type")
        match = _RATE.match(content_type) if isinstance(content_type, str) else None
        if match is None:
            raise VonageMessageError("websocket:connected has no audio/l16 content-type")
        return VonageEvent(event, sample_rate=int(match.group(1)), fields=data)
    if event == "websocket:dtmf":
        digit = data.get("digit")
        if not isinstance(digit, str) or not digit or len(digit) > 4:
            raise VonageMessageError("websocket:dtmf digit must be a short string")
        return VonageEvent(event, digit=digit, fields=data)
    return VonageEvent(event, fields=data)


def render_notify(payload: dict[str, Any]) -> str:
    return json.dumps({"action": "notify", "payload": payload})
