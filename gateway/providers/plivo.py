"""Plivo: X-Plivo-Signature-V3 webhooks, answer/hangup/AMD callbacks, and the `<Stream>` answer. Pure.

Signature V3, as the plivo SDK's `validate_v3_signature` computes it (its tests use it as
the oracle): base64(HMAC-SHA256(auth token, f"{base}.{nonce}")), where for a GET (or a POST
without parameters) `base` is the URL without its query, then `?` and the query's
parameters sorted by name as `k=v&k=v` (decoded, a name's values sorted); for a POST with
form parameters it is the URL without its query, `?`, the sorted query (and `.` when there
is one), then every form parameter sorted by name as `namevalue` with no separators. The
header may carry several comma-separated signatures; one match is enough. Plivo also sends
`X-Plivo-Signature-Ma-V3`, signed with the main account's token: either header may match.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, urlparse, urlunparse

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.states import normalize_status
from gateway.providers.base import BadRequest, Verdict
from gateway.providers.twilio import field_seconds, flatten_fields, single_field

PROVIDER = "plivo"
XML_CONTENT_TYPE = "text/xml"
SIGNATURE_HEADER = "x-plivo-signature-v3"
MAIN_SIGNATURE_HEADER = "x-plivo-signature-ma-v3"
NONCE_HEADER = "x-plivo-signature-v3-nonce"
CONTENT_TYPE = "audio/x-mulaw;rate=8000"
TOKEN_HEADER = "streamtoken"  # the one extraHeaders key: Plivo allows only letters and digits in them
MAX_CALL_ID_CHARS = 64
DIRECTIONS = ("inbound", "outbound")
MACHINE = {"true": True, "false": False}
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# --- signatures ---------------------------------------------------------------------------------


def _values(params: Mapping[str, Sequence[str] | str], name: str) -> list[str]:
    """A field's values, sorted (a bare string is one value, not its characters)."""
    values = params[name]
    return [values] if isinstance(values, str) else sorted(values)


def _sorted_query(params: Mapping[str, Sequence[str] | str]) -> str:
    return "&".join("&".join(f"{name}={value}" for value in _values(params, name)) for name in sorted(params))


def _sorted_params(params: Mapping[str, Sequence[str] | str]) -> str:
    return "".join("".join(f"{name}{value}" for value in _values(params, name)) for name in sorted(params))


def signed_base(method: str, url: str, form: Mapping[str, Sequence[str] | str] | None) -> str:
    """The string Plivo signs (before `.nonce`) for a request to `url` with these form fields."""
    parsed = urlparse(url)
    base = urlunparse((parsed.scheme, parsed.netloc, parsed.path, "", "", ""))
    query = _sorted_query(parse_qs(parsed.query, keep_blank_values=True))
    if method.upper() == "GET" or not form:
        return f"{base}?{query}" if query else base
    return f"{base}?{query}{'.' if query else ''}{_sorted_params(form)}"


def signature_v3(
    auth_token: str, method: str, url: str, form: Mapping[str, Sequence[str] | str] | None, nonce: str
) -> str:
    """The `X-Plivo-Signature-V3` value Plivo computes for this request."""
    message = f"{signed_base(method, url, form)}.{nonce}".encode()
    return base64.b64encode(hmac.digest(auth_token.encode("utf-8"), message, hashlib.sha256)).decode("ascii")


def verify_plivo_signature(
    auth_token: str,
    method: str,
    urls: Sequence[str],
    form: Mapping[str, Sequence[str]] | None,
    signatures: Sequence[str | None],
    nonce: str | None,
) -> Verdict:
    """Check a Plivo request: any of `signatures` (the V3 and Ma-V3 headers) over any of `urls`.

    `urls` are the URL as called (query as received); for the WebSocket upgrade both its
    `wss://` and `https://` spellings, since Plivo does not say which it signs.
    """
    signed_url = " ".join(urls)
    present = [s for s in signatures if isinstance(s, str) and s]
    if not present:
        return Verdict(False, "missing X-Plivo-Signature-V3 header", signed_url=signed_url)
    if not nonce or not isinstance(nonce, str):
        return Verdict(False, "missing X-Plivo-Signature-V3-Nonce header", signed_url=signed_url)
    if not auth_token:
        return Verdict(False, "auth token not configured", signed_url=signed_url)
    offered = {value.encode("utf-8", "replace") for header in present for value in header.split(",")}
    for url in urls:
        try:
            expected = signature_v3(auth_token, method, url, form, nonce).encode("ascii")
        except (ValueError, UnicodeEncodeError):
            return Verdict(False, "invalid URL or parameters", signed_url=signed_url)
        if any(hmac.compare_digest(expected, value) for value in offered):
            return Verdict(True, signed_url=signed_url)
    return Verdict(False, "signature does not match", signed_url=signed_url)


# --- callbacks ----------------------------------------------------------------------------------


def parse_plivo_callback(params: Mapping[str, Sequence[str]], *, kind: str = "status") -> CallUpdate:
    """Normalize a Plivo answer, ring, hangup or machine-detection callback into a `CallUpdate`.

    `CallUUID` is required; `CallStatus` maps through Plivo's row of the status table;
    `Machine` (`true`/`false`) marks voicemail; `Duration` is the call's seconds. Plivo sends
    no sequence numbers: disorder is handled by the states' order alone. `BadRequest` only.
    """
    flat = flatten_fields(params)
    call_id = single_field(flat, "CallUUID")
    if not call_id:
        raise BadRequest("missing CallUUID")
    if len(call_id) > MAX_CALL_ID_CHARS or not _VISIBLE_ASCII.fullmatch(call_id):
        raise BadRequest("CallUUID is not a valid identifier")
    raw_status = single_field(flat, "CallStatus") or None
    machine = single_field(flat, "Machine")
    voicemail = MACHINE.get(machine.strip().lower()) if machine else None
    direction = (single_field(flat, "Direction") or "").strip().lower()
    return CallUpdate(
        provider=PROVIDER,
        kind="amd" if machine else kind,
        provider_call_id=call_id,
        raw_status=raw_status,
        state=normalize_status(PROVIDER, raw_status),
        voicemail=voicemail,
        answered_by=("machine" if voicemail else "human") if voicemail is not None else None,
        from_number=single_field(flat, "From") or None,
        to_number=single_field(flat, "To") or None,
        direction=direction if direction in DIRECTIONS else None,
        duration=field_seconds(single_field(flat, "Duration")),
        params=flat,
    )


# --- the answer ---------------------------------------------------------------------------------


def encode_token(token: str) -> str:
    """The stream token as letters and digits (hex), the only characters `extraHeaders` allows."""
    return token.encode("utf-8").hex()


def decode_token(value: str) -> str | None:
    try:
        return bytes.fromhex(value).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def render_stream_xml(ws_url: str, stream_token: str, *, allow_insecure: bool = False) -> str:
    """Plivo XML connecting the call to a bidirectional stream at `ws_url` (the element's text).

    `keepCallAlive="true"`: the XML reference says the stream then runs alone and nothing after
    it executes until it disconnects; without it, an answer with nothing after `<Stream>` would
    end the call at once. `contentType` is always set (the docs disagree on its default). The
    token travels in `extraHeaders` (echoed in the stream's `start`). ValueError on a bad URL.
    """
    if not isinstance(ws_url, str) or _XML_INVALID.search(ws_url) or any(ch.isspace() for ch in ws_url):
        raise ValueError("stream URL must be a string without whitespace or control characters")
    parsed = urlparse(ws_url)
    if parsed.scheme not in (("wss", "ws") if allow_insecure else ("wss",)) or not parsed.netloc:
        raise ValueError("stream URL must be an absolute wss:// URL")
    if len(ws_url) > 2048:
        raise ValueError("stream URL must be at most 2048 characters")
    response = ET.Element("Response")
    stream = ET.SubElement(
        response,
        "Stream",
        {
            "bidirectional": "true",
            "audioTrack": "inbound",
            "keepCallAlive": "true",
            "contentType": CONTENT_TYPE,
            "extraHeaders": f"{TOKEN_HEADER}={encode_token(stream_token)}",
        },
    )
    stream.text = ws_url
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")
