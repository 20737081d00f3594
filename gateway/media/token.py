"""Per-call stream tokens: an HMAC over the run id and an expiry, handed to the provider in
the answer (TwiML `<Parameter>`, NCCO `headers`) and checked when the media socket opens.
Pure: the caller passes the key and the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_VERSION = "v1"


def _mac(key: bytes, run_id: str, expires: int) -> str:
    digest = hmac.new(key, f"{_VERSION}\x00{run_id}\x00{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint_stream_token(key: bytes, run_id: str, *, now: float, ttl: int) -> str:
    """A token that opens the media socket of `run_id` until `now + ttl`."""
    expires = int(now) + ttl
    return f"{_VERSION}.{expires}.{_mac(key, run_id, expires)}"


def check_stream_token(key: bytes, run_id: str, token: object, *, now: float) -> str | None:
    """None when `token` is valid for `run_id` now; otherwise the reason it is not."""
    if not isinstance(token, str) or not token:
        return "missing stream token"
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _VERSION or not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 12:
        return "malformed stream token"
    expires = int(parts[1])
    if not hmac.compare_digest(_mac(key, run_id, expires).encode(), parts[2].encode("utf-8", "replace")):  # str: ASCII only
        return "stream token does not match this call"
    if expires < now:
        return "stream token expired"
    return None
