"""Per-call stream tokens: an HMAC over the media socket's path ids (`workflow_id`,
`user_id`, `workflow_run_id`) and an expiry, handed to the provider in the answer (TwiML
`<Parameter>`, NCCO `headers`) and checked when the media socket opens. A token opens only
the path it was minted for; the call's state decides the rest (a finished call's socket is
refused whatever its token says, see `gateway.api.media`). Pure: the caller passes the key and
the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_VERSION = "v2"  # v1 bound the run id alone


def _mac(key: bytes, workflow_id: str, user_id: str, run_id: str, expires: int) -> str:
    message = "\x00".join((_VERSION, workflow_id, user_id, run_id, str(expires))).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint_stream_token(key: bytes, run_id: str, *, now: float, ttl: int, workflow_id: str, user_id: str) -> str:
    """A token that opens the media socket `/ws/{workflow_id}/{user_id}/{run_id}` until `now + ttl`."""
    expires = int(now) + ttl
    return f"{_VERSION}.{expires}.{_mac(key, workflow_id, user_id, run_id, expires)}"


def check_stream_token(
    key: bytes, run_id: str, token: object, *, now: float, workflow_id: str, user_id: str
) -> str | None:
    """None when `token` is valid for this path's ids now; otherwise the reason it is not."""
    if not isinstance(token, str) or not token:
        return "missing stream token"
    parts = token.split(".")
    if len(parts) == 3 and parts[0] == "v1":
        return "stream token of an earlier version (v1): the call must be answered again"
    if len(parts) != 3 or parts[0] != _VERSION or not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 12:
        return "malformed stream token"
    expires = int(parts[1])
    mac = _mac(key, workflow_id, user_id, run_id, expires)
    if not hmac.compare_digest(mac.encode(), parts[2].encode("utf-8", "replace")):  # str: ASCII only
        return "stream token does not match this call"
    if expires < now:
        return "stream token expired"
    return None
