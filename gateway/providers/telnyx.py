"""Telnyx (TeXML): Ed25519 webhook signatures, TeXML callbacks, and the TeXML answer. Pure.

Telnyx signs every webhook with Ed25519: `telnyx-signature-ed25519` is the base64 signature
of `f"{telnyx-timestamp}|{raw body}"` under the account's public key (base64, 32 bytes), and
a timestamp more than `tolerance` seconds from now either way is refused, as the telnyx SDK's
`verify_webhook_signature` does (its tests use it as the oracle). TeXML instruction fetches and
status callbacks carry Twilio's form fields (`CallSid`, `CallStatus`, `From`, `To`,
`SequenceNumber`, `AnsweredBy`...), so they are read by the same form-callback parser under
Telnyx's own row of the status table.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from functools import lru_cache
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.calls.lifecycle import CallUpdate
from gateway.errors import GatewayError
from gateway.providers.base import BadRequest, Verdict, iso_utc
from gateway.providers.twilio import parse_twilio_callback

PROVIDER = "telnyx"
TEXML_CONTENT_TYPE = "text/xml"
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
DEFAULT_TOLERANCE = 300  # seconds either way, as the SDK
CODECS = ("PCMU", "PCMA")
MAX_CALL_ID_CHARS = 128  # TeXML CallSids are Call Control ids ("v3:..."), longer than Twilio's
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class PublicKeyError(GatewayError, ValueError):
    """The configured public key is not a base64 Ed25519 key (names the problem, never the key)."""


@lru_cache(maxsize=8)
def load_public_key(value: str) -> Ed25519PublicKey:
    """The Ed25519 key from its base64 text (as Mission Control shows it); `PublicKeyError` otherwise."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PublicKeyError("not base64") from None
    if len(raw) != 32:
        raise PublicKeyError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_telnyx_signature(
    public_key: Ed25519PublicKey | str,
    raw_body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verdict:
    """Check a Telnyx webhook: Ed25519 over `timestamp|body`, timestamp within `tolerance` of `now`.

    The body is taken as the bytes received (the SDK decodes it as UTF-8 and re-encodes it,
    the same bytes for any body it accepts). A GET carries an empty body: `timestamp|`.
    """
    if not signature or not isinstance(signature, str):
        return Verdict(False, f"missing {SIGNATURE_HEADER} header")
    if not timestamp or not isinstance(timestamp, str):
        return Verdict(False, f"missing {TIMESTAMP_HEADER} header")
    stamp = timestamp.strip()
    if not _TIMESTAMP.fullmatch(stamp):
        return Verdict(False, "telnyx-timestamp is not Unix seconds")
    if abs(now - int(stamp)) > tolerance:
        return Verdict(False, f"timestamp outside the {int(tolerance)} s tolerance")
    if isinstance(public_key, str):
        try:
            public_key = load_public_key(public_key)
        except PublicKeyError:
            return Verdict(False, "public key not configured correctly")
    try:
        raw_signature = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return Verdict(False, "signature is not base64")
    if len(raw_signature) != 64:
        return Verdict(False, "signature is not 64 bytes")
    try:
        public_key.verify(raw_signature, stamp.encode("ascii") + b"|" + bytes(raw_body))
    except InvalidSignature:
        return Verdict(False, "signature does not match")
    return Verdict(True)


def parse_telnyx_callback(params: Mapping[str, Sequence[str]], *, kind: str = "status") -> CallUpdate:
    """Normalize a TeXML instruction fetch, status or AMD callback into a `CallUpdate`.

    The fields are Twilio's; `Timestamp` may be RFC 2822 or ISO 8601. A Call Control event
    (a JSON `{"data": {"event_type": ...}}`) is refused by name: the gateway speaks TeXML.
    `BadRequest` only.
    """
    if "CallSid" not in params and "data" in params:
        raise BadRequest(
            "this is a Call Control event (JSON); the gateway speaks TeXML: point a TeXML application at it"
        )
    update = parse_twilio_callback(params, kind=kind, provider=PROVIDER, max_call_sid_chars=MAX_CALL_ID_CHARS)
    stamp = update.params.get("Timestamp")
    if update.occurred_at is None and isinstance(stamp, str) and stamp:
        update = dataclasses.replace(update, occurred_at=iso_utc(stamp))
    return update


def _check_text(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if _XML_INVALID.search(value):
        raise ValueError(f"{what} contains a character XML cannot carry")
    return value


def render_connect_texml(
    ws_url: str, parameters: Mapping[str, str], *, codec: str = "PCMU", allow_insecure: bool = False
) -> str:
    """TeXML connecting the call to a bidirectional RTP media stream at `ws_url`.

    `<Connect><Stream>`: the call waits on the stream (what follows runs once it stops).
    `bidirectionalMode="rtp"` so the gateway's frames are played as raw audio (the default,
    mp3, wants whole MP3 files); `codec` and `bidirectionalCodec` both `codec`, so one format
    travels each way. Each parameter becomes a `<Parameter>`, delivered in the stream's
    `start.custom_parameters`. ValueError on a bad argument; `allow_insecure` admits `ws://`
    (loopback development and simulators only).
    """
    _check_text("stream URL", ws_url)
    parts = urlsplit(ws_url)
    if parts.scheme not in (("wss", "ws") if allow_insecure else ("wss",)) or not parts.netloc:
        raise ValueError("stream URL must be an absolute wss:// URL")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}")
    response = ET.Element("Response")
    stream = ET.SubElement(
        ET.SubElement(response, "Connect"),
        "Stream",
        {
            "url": ws_url,
            "track": "inbound_track",
            "codec": codec,
            "bidirectionalMode": "rtp",
            "bidirectionalCodec": codec,
            "bidirectionalSamplingRate": "8000",
        },
    )
    for name, value in parameters.items():
        if not _check_text("parameter name", name):
            raise ValueError("parameter name must not be empty")
        ET.SubElement(stream, "Parameter", {"name": name, "value": _check_text(f"parameter {name[:64]!r}", value)})
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")
