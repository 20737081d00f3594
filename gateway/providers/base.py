"""What every provider module shares: the verification verdict, the bad-input error, body parsers.

Sans-I/O: these functions take bytes and return data; the HTTP layer reads the request,
enforces `MAX_BODY_BYTES` while reading, and maps `BadRequest` to 400.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_plus

from gateway.errors import GatewayError

MAX_BODY_BYTES = 64 * 1024
MAX_FORM_FIELDS = 1000
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a provider request's signature.

    `reason` is short and safe to show or log (never a secret); `signed_url` is the URL(s) a
    Twilio signature was checked over, space-separated; `claims` are a Vonage JWT's claims when ok.
    """

    ok: bool
    reason: str = ""
    signed_url: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


class BadRequest(GatewayError, ValueError):
    """Malformed provider input; str(exc) names the problem (HTTP 400)."""


def _check_size(raw: bytes, limit: int = MAX_BODY_BYTES) -> None:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise BadRequest("body must be bytes")
    if len(raw) > limit:
        raise BadRequest(f"body too large (over {limit} bytes)")


def _decode_utf8(raw: bytes) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8 (byte {exc.start})") from None


def parse_form(raw: bytes) -> dict[str, list[str]]:
    """Parse an application/x-www-form-urlencoded body into {name: [values]} in arrival order.

    Strict UTF-8 (raw and percent-decoded), blank values kept (Twilio sends empty fields and
    they are part of its signature), at most `MAX_FORM_FIELDS` fields.
    """
    _check_size(raw)
    text = _decode_utf8(raw)
    if not text:
        return {}
    if text.count("&") + 1 > MAX_FORM_FIELDS:
        raise BadRequest(f"too many form fields (over {MAX_FORM_FIELDS})")
    # What `urllib.parse.parse_qs(text, keep_blank_values=True, errors="strict")` does, field
    # by field, percent-decoding only the fields that need it: parse_qs decoded every name and
    # value in Python, a tenth of a status callback's handling.
    form: dict[str, list[str]] = {}
    try:
        for pair in text.split("&"):
            if not pair:
                continue
            name, _, value = pair.partition("=")
            if "%" in name or "+" in name:
                name = unquote_plus(name, errors="strict")
            if "%" in value or "+" in value:
                value = unquote_plus(value, errors="strict")
            found = form.get(name)
            if found is None:
                form[name] = [value]
            else:
                found.append(value)
    except UnicodeDecodeError:
        raise BadRequest("form field is not valid UTF-8 after percent-decoding") from None
    return form


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"invalid JSON: {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadRequest("invalid JSON: number out of range")
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        return False
    return True


def _check_tree(value: Any, limit: int) -> None:
    """Refuse nesting deeper than `limit` and strings that cannot be stored as UTF-8.

    Iterative, so hostile input cannot exhaust the stack.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                raise BadRequest("invalid JSON: string contains a lone surrogate escape")
            continue
        if isinstance(item, dict):
            children: list[Any] = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise BadRequest(f"JSON nested too deeply (over {limit} levels)")
        stack.extend((child, depth + 1) for child in children)


def check_json_tree(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """`BadRequest` when parsed JSON nests deeper than `limit` or holds a string with a lone
    surrogate (a `\\ud800` escape `json.loads` lets through): what the store cannot write as
    UTF-8. For JSON that arrives other than as a request body (media and agent sockets)."""
    _check_tree(value, limit)


def parse_json_object(raw: bytes, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """Parse a UTF-8 JSON object body (Vonage events, Twilio JSON callbacks, admin API bodies).

    Refuses a body over `limit` bytes, invalid UTF-8 (and a BOM), invalid JSON, NaN/Infinity
    and overflowing numbers, a top level that is not an object, nesting deeper than
    `MAX_JSON_DEPTH`, and lone surrogate escapes (they would fail later, when the timeline is
    stored as UTF-8).
    """
    _check_size(raw, limit)
    text = _decode_utf8(raw)
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest(f"JSON nested too deeply (over {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # JSONDecodeError, and int-digit limits
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"JSON body must be an object, not {type(value).__name__}")
    _check_tree(value, MAX_JSON_DEPTH)
    return value


def _utc(parsed: datetime | None) -> datetime | None:
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # naive (or RFC 2822's "-0000"): UTC with no claim about local time
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def rfc2822_utc(value: object) -> datetime | None:
    """An RFC 2822 date (Twilio's, Telnyx TeXML's) as aware UTC; None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return _utc(parsedate_to_datetime(value))
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def iso_utc(value: object) -> datetime | None:
    """An ISO 8601 time (Vonage's, Telnyx's, Plivo's; naive counts as UTC) as aware UTC; None when
    absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return _utc(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
    except ValueError:
        return None


def provider_time(value: object) -> datetime | None:
    """A time a provider's REST API wrote in either form (RFC 2822 first, then ISO 8601)."""
    return rfc2822_utc(value) or iso_utc(value)
