"""Signatures on outbound webhooks, so receivers can tell the gateway's requests from forgeries.

Every request carries `webhook-id` (the message id, stable across retries: the receiver's
idempotency key) and `webhook-timestamp` (Unix seconds of this attempt). Then, by scheme:

- `standard` (Standard Webhooks v1): `webhook-signature` is `v1,<base64 HMAC-SHA256>` over
  `{id}.{timestamp}.{body}`, one per live secret separated by spaces, so secrets can be rotated
  by listing the new one next to the old one until every receiver has it.
- `hmac_sha256_hex`: a header (default `X-Webhook-Signature`) with the hex HMAC-SHA256 of the raw
  body, for receivers built around that simpler scheme.
- `dialgen`: the `standard` headers, and `x-dialgen-signature` with the hex HMAC-SHA256 of the raw
  body keyed with the first secret's text exactly as the user holds it (`whsec_...` included), as
  Dialgen's receivers check it. The body is written as `JSON.stringify` writes it back
  (`ecmascript_json`), so a receiver that signs `JSON.stringify(req.body)` gets the same bytes.
- `none`: no signature header.

Pure: no clock, no I/O; the caller passes the timestamp and resolved secrets.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
DEFAULT_HEX_HEADER = "X-Webhook-Signature"
DIALGEN_HEADER = "x-dialgen-signature"


def decode_signing_secret(secret: str) -> bytes:
    """The HMAC key inside a `whsec_...` secret; ValueError (without the secret) when malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a signing secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a signing secret is whsec_ followed by standard base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"a signing secret decodes to {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {len(key)}")
    return key


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks `v1,<base64>` signature."""
    if "." in message_id:
        raise ValueError("a webhook id may not contain '.'")
    key = decode_signing_secret(secret)
    signed = f"{message_id}.{int(timestamp)}.".encode() + body
    digest = hmac.digest(key, signed, "sha256")
    return "v1," + base64.b64encode(digest).decode("ascii")


def hmac_sha256_hex(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `body` keyed with the UTF-8 bytes of `secret`."""
    return hmac.digest(secret.encode("utf-8"), body, "sha256").hex()


def signature_headers(
    scheme: str,
    secrets: Sequence[str],
    *,
    message_id: str,
    timestamp: int,
    body: bytes,
    header: str = DEFAULT_HEX_HEADER,
) -> dict[str, str]:
    """The id, timestamp and signature headers for one attempt under `scheme`.

    `standard` signs with every secret in `secrets` (rotation); `hmac_sha256_hex` uses the first;
    `dialgen` is `standard` plus Dialgen's hex header with the first.
    """
    if "." in message_id or not message_id:
        raise ValueError("a webhook id is non-empty and may not contain '.'")
    headers = {"webhook-id": message_id, "webhook-timestamp": str(int(timestamp))}
    if scheme in ("standard", "dialgen"):
        if secrets:
            headers["webhook-signature"] = " ".join(
                standard_signature(secret, message_id, timestamp, body) for secret in secrets
            )
            if scheme == "dialgen":
                headers[DIALGEN_HEADER] = hmac_sha256_hex(secrets[0], body)
    elif scheme == "hmac_sha256_hex":
        if not secrets:
            raise ValueError("hmac_sha256_hex signing needs a secret")
        headers[header] = hmac_sha256_hex(secrets[0], body)
    elif scheme != "none":
        raise ValueError(f"unknown signing scheme {scheme!r}")
    return headers


def verify_standard(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance: float = 300
) -> str | None:
    """Why a Standard Webhooks request does not verify under `secret`, or None when it does.

    `headers` are looked up by lower-case name. A request verifies when its timestamp is within
    `tolerance` seconds of `now` and any `v1,` signature it carries matches (rotation sends several).
    """
    message_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not message_id or not stamp or not signatures:
        missing = [
            name
            for name, value in (
                ("webhook-id", message_id),
                ("webhook-timestamp", stamp),
                ("webhook-signature", signatures),
            )
            if not value
        ]
        return "missing " + ", ".join(missing)
    try:
        timestamp = int(stamp)
    except ValueError:
        return "webhook-timestamp is not a number"
    if abs(now - timestamp) > tolerance:
        return f"webhook-timestamp is {int(now - timestamp)} s off this machine's clock"
    try:
        expected = standard_signature(secret, message_id, timestamp, body).encode()
    except ValueError as exc:
        return str(exc)
    offered = [part.encode() for part in signatures.split() if part.startswith("v1,")]
    if any(hmac.compare_digest(expected, candidate) for candidate in offered):
        return None
    return "no signature matches this secret"
