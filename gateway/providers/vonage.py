"""Vonage: signed-webhook JWTs, answer/event webhooks, and the NCCO answer. Pure.

Signed webhooks carry `Authorization: Bearer <JWT>` (HS256, keyed by the account's signature
secret; claims iat, jti, iss, payload_hash, api_key, application_id; no exp). pyjwt checks the
signature only: every time-based check is done here against the caller's `now`, because
pyjwt's own iat/exp checks read the wall clock and reject future iat with zero leeway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import urlsplit

import jwt
from jwt.warnings import InsecureKeyLengthWarning

if TYPE_CHECKING:
    from jwt.types import Options

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.states import normalize_status
from gateway.providers.base import BadRequest, Verdict, iso_utc

PROVIDER = "vonage"
WEBSOCKET_LEG = "vonage-websocket"  # the status table's row for the leg an NCCO connect opens
ECHOED_SECRETS = frozenset({"headers", "stream_token"})  # websocket-leg events echo our NCCO headers
NCCO_CONTENT_TYPE = "application/json"
CONTENT_TYPES = ("audio/l16;rate=8000", "audio/l16;rate=16000", "audio/l16;rate=24000")
MAX_HEADERS_BYTES = 512
# Keys Vonage puts at the top level of `websocket:connected` beside the flattened headers.
RESERVED_HEADER_NAMES = frozenset({"event", "content-type"})

MAX_TOKEN_CHARS = 8192
MAX_JTI_CHARS = 256
MAX_ID_CHARS = 128
MAX_VALUE_CHARS = 1024
AMD_STATUSES = {"human": False, "machine": True}
DIRECTIONS = ("inbound", "outbound")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_DIGITS = re.compile(r"[0-9]{1,18}")
MAX_SECONDS = 10**18 - 1  # as many as _DIGITS allows: every store's integer column holds it

# Vonage, not the operator, chooses the signature secret: pyjwt's advice to key HMAC with 32 bytes
# or more (a warning on every request checked) is nothing anyone running the gateway can act on.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)

# pyjwt: signature and structure only; time and claim checks are ours.
_DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


# --- signed webhooks ------------------------------------------------------------------------


class ReplayGuard:
    """Remembers JWT ids (`jti`) so a captured signed request cannot be replayed.

    In memory and per process, for a caller without a store (the gateway claims `jti`s in its
    store instead: `GatewayContext.first_use_of_jwt`). Entries live `window_seconds` (or until `expires_at`); at `max_entries` the oldest
    entry is dropped.
    """

    def __init__(self, window_seconds: float = 300, max_entries: int = 100_000) -> None:
        if window_seconds < 0 or max_entries < 1:
            raise ValueError("window_seconds must be >= 0 and max_entries >= 1")
        self.window_seconds = float(window_seconds)
        self.max_entries = int(max_entries)
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, jti: str, now: float, *, expires_at: float | None = None) -> bool:
        """True the first time `jti` is seen while remembered; False for a replay.

        `expires_at` (optional): remember until then instead of `now + window_seconds`.
        `verify_vonage_jwt` passes iat + its window, the last moment the token is acceptable.
        """
        self._purge(now)
        expiry = self._seen.get(jti)
        if expiry is not None and expiry >= now:
            return False
        self._seen[jti] = max(now, expires_at if expires_at is not None else now + self.window_seconds)
        self._seen.move_to_end(jti)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return True

    def _purge(self, now: float) -> None:
        """Drop expired entries from the old end (insertion order approximates expiry order)."""
        while self._seen:
            oldest_jti, expiry = next(iter(self._seen.items()))
            if expiry >= now:
                return
            del self._seen[oldest_jti]


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization or not isinstance(authorization, str):
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def _is_number(value: Any) -> TypeGuard[int | float]:
    """A finite JSON number (not a bool, not an int too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def verify_vonage_jwt(
    authorization: str | None,
    secret: str,
    raw_body: bytes,
    *,
    now: float,
    replay: ReplayGuard | None,
    window_seconds: float = 300,
    api_key: str | None = None,
    application_id: str | None = None,
) -> Verdict:
    """Check a Vonage signed webhook: the `Authorization` header value against the raw body.

    HS256 only, keyed by `secret` (the signature secret); `iat` within `window_seconds` of
    `now` in either direction; `payload_hash` = SHA-256 hex of the body when there is a body
    (an empty body, e.g. a GET answer webhook, is not hash-checked: Vonage documents no hash
    basis for query strings); `api_key`/`application_id` claims must match when configured;
    `jti` accepted once (checked last, so only otherwise-valid tokens are remembered) by
    `replay`; with `replay` None the caller claims `claims["jti"]` itself (the gateway does, in
    its store, so a replay is refused across restarts and instances).
    """
    token = _bearer_token(authorization)
    if token is None:
        return Verdict(False, "missing Authorization bearer token")
    if not secret or not isinstance(secret, str):
        return Verdict(False, "signature secret not configured")
    if len(token) > MAX_TOKEN_CHARS:
        return Verdict(False, "malformed token")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        return Verdict(False, "malformed token")
    if header.get("alg") != "HS256":
        return Verdict(False, "token algorithm is not HS256")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options=_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        return Verdict(False, "signature does not match")
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        return Verdict(False, "malformed token")

    iat = claims.get("iat")
    if not _is_number(iat):
        return Verdict(False, "token has no valid iat")
    if now - iat > window_seconds:
        return Verdict(False, "token issued too long ago")
    if iat - now > window_seconds:
        return Verdict(False, "token issued in the future")

    if raw_body:
        payload_hash = claims.get("payload_hash")
        if not isinstance(payload_hash, str) or not payload_hash:
            return Verdict(False, "missing payload_hash")
        actual = hashlib.sha256(bytes(raw_body)).hexdigest()
        if not hmac.compare_digest(payload_hash.strip().lower().encode(), actual.encode()):
            return Verdict(False, "body does not match payload_hash")

    if api_key is not None and claims.get("api_key") != api_key:
        return Verdict(False, "api_key does not match")
    if application_id is not None and claims.get("application_id") != application_id:
        return Verdict(False, "application_id does not match")

    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        return Verdict(False, "token has no valid jti")
    if replay is not None and not replay.first_use(jti, now, expires_at=iat + window_seconds):
        return Verdict(False, "replayed token")
    return Verdict(True, "", claims=dict(claims))


# --- webhooks -------------------------------------------------------------------------------


def _require_mapping(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise BadRequest("webhook body must be a JSON object")
    for key in data:
        if not isinstance(key, str):
            raise BadRequest("webhook field names must be text")
    return data


def _text(data: Mapping[str, Any], name: str, label: str | None = None) -> str | None:
    """An optional string field: None when absent/null, BadRequest when not a string or too long."""
    value = data.get(name)
    label = label or name
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{label} must be a string")
    if len(value) > MAX_VALUE_CHARS:
        raise BadRequest(f"{label} too long (over {MAX_VALUE_CHARS} characters)")
    return value


def _call_id(data: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = _text(data, name)
        if value:
            if len(value) > MAX_ID_CHARS or not _VISIBLE_ASCII.fullmatch(value):
                raise BadRequest(f"{name} is not a valid identifier")
            return value
    raise BadRequest(f"missing {names[0]}")


def _endpoint(data: Mapping[str, Any], name: str) -> tuple[str | None, str | None]:
    """`from`/`to` as (address, endpoint type): a plain string, or an object such as
    {"type": "phone", "number": ...}, {"type": "sip"|"websocket", "uri": ...}, {"type": "app", "user": ...}."""
    value = data.get(name)
    if value is None:
        return None, None
    if isinstance(value, list):  # tolerate a one-element list of endpoints
        value = value[0] if value else None
        if value is None:
            return None, None
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise BadRequest(f"{name} too long (over {MAX_VALUE_CHARS} characters)")
        kind = "websocket" if value.lower().startswith(("ws://", "wss://")) else None
        return value or None, kind
    if isinstance(value, Mapping):
        kind = _text(value, "type", f"{name}.type")
        for key in ("number", "uri", "user", "extension"):
            address = _text(value, key, f"{name}.{key}")
            if address:
                return address, kind
        return None, kind
    raise BadRequest(f"{name} must be a string or an endpoint object")


def _duration(data: Mapping[str, Any]) -> int | None:
    value = data.get("duration")
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("duration must be a string or an integer")
    if isinstance(value, int):
        return value if 0 <= value <= MAX_SECONDS else None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and 0 <= value <= MAX_SECONDS and value == int(value) else None
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _DIGITS.fullmatch(text) else None
    raise BadRequest("duration must be a string or an integer")


def parse_vonage_event(data: Mapping[str, Any]) -> CallUpdate:
    """Normalize a Vonage event webhook (JSON body, or GET query flattened) into a `CallUpdate`.

    kind: "amd" for `human`/`machine` events (voicemail False/True, state None, call id in
    `call_uuid`); "websocket" for events about the websocket leg the NCCO connect opened (its
    `to` is the wss:// URI; the call id is that leg's uuid, `to_number` is left None); "status"
    for everything else. Non-string fields where strings belong raise `BadRequest`.
    """
    data = _require_mapping(data)
    call_id = _call_id(data, "uuid", "call_uuid")
    raw_status = _text(data, "status") or None
    status_word = raw_status.strip().lower() if raw_status else ""
    from_number, _ = _endpoint(data, "from")
    to_number, to_type = _endpoint(data, "to")
    _text(data, "conversation_uuid")  # type check: kept in params
    direction_raw = _text(data, "direction")
    direction = direction_raw.strip().lower() if direction_raw else None

    if status_word in AMD_STATUSES:
        kind = "amd"
    elif to_type == "websocket":
        kind = "websocket"
        to_number = None
    else:
        kind = "status"
    return CallUpdate(
        provider=PROVIDER,
        kind=kind,
        provider_call_id=call_id,
        raw_status=raw_status,
        state=normalize_status(WEBSOCKET_LEG if kind == "websocket" else PROVIDER, raw_status),
        voicemail=AMD_STATUSES.get(status_word),
        answered_by=raw_status if kind == "amd" else None,
        sequence=None,
        occurred_at=iso_utc(_text(data, "timestamp")),
        from_number=from_number,
        to_number=to_number,
        direction=direction if direction in DIRECTIONS else None,
        duration=_duration(data),
        params={k: v for k, v in data.items() if k not in ECHOED_SECRETS},
    )


def parse_vonage_answer(data: Mapping[str, Any]) -> CallUpdate:
    """Normalize a Vonage answer webhook (GET query by default, JSON with answer_method=POST).

    kind "answer", state None: answering says nothing about the lifecycle by itself.
    """
    data = _require_mapping(data)
    call_id = _call_id(data, "uuid")
    for name in ("conversation_uuid", "from_user", "endpoint_type", "region_url"):
        _text(data, name)
    from_number, _ = _endpoint(data, "from")
    to_number, _ = _endpoint(data, "to")
    return CallUpdate(
        provider=PROVIDER,
        kind="answer",
        provider_call_id=call_id,
        state=None,
        from_number=from_number,
        to_number=to_number,
        params=dict(data),
    )


# --- NCCO -----------------------------------------------------------------------------------


def _absolute_url(url: str, schemes: tuple[str, ...], what: str) -> None:
    if not isinstance(url, str) or not url:
        raise ValueError(f"{what} must be a non-empty string")
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"{what} must be an absolute {' or '.join(s + '://' for s in schemes)} URL")
    if any(ch.isspace() for ch in url):
        raise ValueError(f"{what} must not contain whitespace")


def render_connect_ncco(
    ws_url: str,
    headers: Mapping[str, str],
    event_url: str,
    *,
    content_type: str = "audio/l16;rate=16000",
    allow_insecure: bool = False,
) -> list[dict[str, Any]]:
    """An NCCO connecting the call to the gateway's media WebSocket.

    `eventType: "synchronous"` with `eventUrl`: only then does Vonage report a websocket that
    cannot be reached (`failed`/`unanswered`) or that drops (`disconnected`) to `event_url`,
    and it treats the reply as a possible replacement NCCO; a reply that is not an NCCO lets
    the original flow continue, and with nothing after `connect` the call ends. `headers`
    (at most 512 bytes as JSON) come back flattened into `websocket:connected`, so "event"
    and "content-type" are refused as names. ValueError on any bad argument. `allow_insecure`
    also admits `ws://`, for loopback development and simulators only.
    """
    _absolute_url(ws_url, ("wss", "ws") if allow_insecure else ("wss",), "websocket URL")
    _absolute_url(event_url, ("https", "http"), "event URL")
    if content_type not in CONTENT_TYPES:
        raise ValueError(f"content_type must be one of {', '.join(CONTENT_TYPES)}")
    clean: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise ValueError("headers must map non-empty strings to strings")
        if name.lower() in RESERVED_HEADER_NAMES:
            raise ValueError(f"header name {name!r} is reserved by Vonage")
        clean[name] = value
    # Counted with \u escapes: never smaller than the UTF-8 form, so within the limit either way.
    size = len(json.dumps(clean, separators=(",", ":")).encode("ascii"))
    if size > MAX_HEADERS_BYTES:
        raise ValueError(f"headers are {size} bytes as JSON; Vonage allows {MAX_HEADERS_BYTES}")
    return [
        {
            "action": "connect",
            "eventType": "synchronous",
            "eventUrl": [event_url],
            "endpoint": [
                {
                    "type": "websocket",
                    "uri": ws_url,
                    "content-type": content_type,
                    "headers": clean,
                }
            ],
        }
    ]
