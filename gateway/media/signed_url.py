"""Signatures for the expiring links to a call's recording and transcript. Pure.

A link carries `expires` (Unix seconds) and `signature`, an HMAC-SHA256 with the gateway's
`secret_key` over what is served (`recording` or `transcript`), the run id and the expiry,
so a link opens one artefact of one call until it expires and cannot be bent to another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_VERSION = "m1"
DEFAULT_TTL = 7 * 24 * 3600  # a week: long enough for downstream systems to fetch it
KINDS = ("recording", "transcript")


def sign(key: bytes, kind: str, run_id: str, expires: int) -> str:
    """The URL-safe signature of `kind` of `run_id` until `expires`."""
    message = f"{_VERSION}\x00{kind}\x00{run_id}\x00{expires}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def signed_query(key: bytes, kind: str, run_id: str, *, now: float, ttl: int = DEFAULT_TTL) -> str:
    """`expires=...&signature=...` for a link valid from `now` for `ttl` seconds."""
    expires = int(now) + ttl
    return f"expires={expires}&signature={sign(key, kind, run_id, expires)}"


def check(key: bytes, kind: str, run_id: str, expires: str | None, signature: str | None, *, now: float) -> str | None:
    """None when the link is valid now; otherwise why it is not."""
    if not expires or not signature:
        return "the link needs expires and signature"
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        return "expires must be Unix seconds"
    if not hmac.compare_digest(sign(key, kind, run_id, int(expires)).encode(), signature.encode("utf-8", "replace")):
        return "signature does not match this link"
    if int(expires) < now:
        return "the link has expired"
    return None
