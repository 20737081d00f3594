"""Twilio: request signatures, status/AMD callbacks, and the TwiML answers. Pure.

Signature checks delegate to the twilio package's `RequestValidator` (its port variants,
multi-value rules and bodySHA256 handling are Twilio's own); this module only decides which
URL and parameters to hand it and never hands it the inputs it mishandles. One shortcut sits
in front: a form signed over exactly the URL called is accepted after one HMAC (the SDK
computes two and parses the URL); anything else gets the SDK's full check.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    RequestValidator,
    get_signature_algorithm,
)
from twilio.twiml.voice_response import VoiceResponse

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.states import normalize_status
from gateway.providers.base import BadRequest, Verdict, rfc2822_utc

PROVIDER = "twilio"
TWIML_CONTENT_TYPE = "text/xml"
SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"

MAX_FIELDS = 1000
MAX_NAME_CHARS = 256
MAX_VALUE_CHARS = 1024
MAX_CALL_SID_CHARS = 64
MAX_PARAMETER_CHARS = 500  # <Parameter>: name + value, per the <Stream> docs

# AnsweredBy -> voicemail. "fax" counts as a machine: nobody on the line to talk to, and the
# raw word stays in `answered_by` for consumers that treat fax differently.
ANSWERED_BY_VOICEMAIL: dict[str, bool] = {
    "human": False,
    "machine_start": True,
    "machine_end_beep": True,
    "machine_end_silence": True,
    "machine_end_other": True,
    "fax": True,
    "machine": True,  # Telnyx TeXML (its "not_sure" stays unknown)
}
DIRECTIONS: dict[str, str] = {
    "inbound": "inbound",
    "outbound-api": "outbound",
    "outbound-dial": "outbound",
    "outbound": "outbound",  # Telnyx TeXML's word
}
_SUPPORTED_ALGORITHMS = (HMAC_SHA1, HMAC_SHA256)
_HASHES = {HMAC_SHA1: "sha1", HMAC_SHA256: "sha256"}  # hmac.digest's one-shot names
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_DIGITS = re.compile(r"[0-9]{1,18}")
# Characters XML 1.0 cannot carry, even escaped.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# --- signatures ---------------------------------------------------------------------------


class _MultiDict(dict[str, list[str]]):
    """A dict of lists the SDK reads through `getlist` (a plain dict of lists makes it crash)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def _items(params: Mapping[str, Sequence[str]]) -> list[tuple[object, object]]:
    """(name, values) pairs; multidicts (Starlette's FormData/QueryParams) through `getlist`,
    whose `items()` would keep only one value per name."""
    getlist = getattr(params, "getlist", None)
    if callable(getlist):
        return [(name, getlist(name)) for name in dict.fromkeys(params.keys())]
    return list(params.items())


def _split_authority(url: str) -> tuple[str, str, str] | None:
    """(scheme, authority, the rest from its first `/`, `?` or `#`), or None without `://`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    end = len(rest)
    for ch in "/?#":
        found = rest.find(ch)
        if found != -1:
            end = min(end, found)
    return scheme, rest[:end], rest[end:]


def _strip_userinfo(url: str) -> str:
    """Drop `user:password@` from the URL: Twilio does before signing, and it must not be logged."""
    parts = _split_authority(url)
    if parts is None or "@" not in parts[1]:
        return url
    scheme, netloc, rest = parts
    return f"{scheme}://{netloc.rpartition('@')[2]}{rest}"


def _origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL: what the URL checks below look at."""
    parts = _split_authority(url)
    return url if parts is None else f"{parts[0]}://{parts[1]}"


@lru_cache(maxsize=256)
def _origin_ok(origin: str) -> bool:
    """Whether a URL with this origin can be checked: http(s)/ws(s), a host, a valid port (as
    the SDK parses it). Cached: a gateway is called at very few origins."""
    try:
        parsed = urlsplit(origin)
        parsed.port  # noqa: B018 - raises ValueError on a bad port, as the SDK would
    except ValueError:
        return False
    return parsed.scheme.lower() in ("http", "https", "ws", "wss") and bool(parsed.netloc)


def _with_trailing_slash(url: str) -> str | None:
    """The URL with "/" appended to its path, or None when the path already ends in "/"."""
    base, sep, query = url.partition("?")
    if base.endswith("/"):
        return None
    return f"{base}/{sep}{query}"


def verify_twilio_signature(
    auth_token: str,
    url: str,
    form: Mapping[str, Sequence[str]] | None,
    raw_body: bytes,
    signature: str | None,
    *,
    signature_settings: str | None = None,
) -> Verdict:
    """Check `X-Twilio-Signature` for a request Twilio made to `url`.

    `url` is the full public URL Twilio called, query string exactly as received. `form` is the
    parsed form body (None for GET, JSON bodies and the WebSocket upgrade). With `bodySHA256`
    in the query the raw body is checked against it instead of form parameters. `auth_token`
    is the key the request was signed with: the Auth Token, or the SharedKey secret when
    `signature_settings` (the `X-Twilio-Webhooks-Signature-Settings` header) names one.
    For `wss://` URLs the signature is also accepted over the URL with a trailing "/".
    """
    url = _strip_userinfo(url) if isinstance(url, str) else ""
    candidates = [url]
    if url.lower().startswith("wss://"):
        slashed = _with_trailing_slash(url)
        if slashed is not None:
            candidates.append(slashed)
    signed_url = " ".join(candidates)

    def refuse(reason: str) -> Verdict:
        return Verdict(False, reason, signed_url=signed_url)

    if not signature or not isinstance(signature, str) or not signature.strip():
        return refuse(f"missing {SIGNATURE_HEADER} header")
    signature = signature.strip()
    if not auth_token or not isinstance(auth_token, str):
        return refuse("auth token not configured")
    algorithm = get_signature_algorithm(signature_settings)
    if algorithm.upper() not in _SUPPORTED_ALGORITHMS:
        return refuse("unsupported signature algorithm")
    if not _origin_ok(_origin_of(url)):
        return refuse("invalid URL")
    raw_query = url.partition("#")[0].partition("?")[2]
    if (
        form is not None
        and "bodySHA256" not in raw_query
        and _matches_exactly(auth_token, url, form, signature, algorithm)
    ):
        return Verdict(True, "", signed_url=signed_url)
    try:
        query = parse_qs(urlsplit(url).query)
    except ValueError:
        return refuse("invalid URL")

    validator = RequestValidator(auth_token)
    params: str | _MultiDict
    if "bodySHA256" in query:
        # Same test the SDK applies; with a str it hashes the body and signs the URL alone.
        try:
            body_text = bytes(raw_body).decode("utf-8")
        except UnicodeDecodeError:
            return refuse("body is not valid UTF-8")
        expected_hash = query["bodySHA256"][0]
        if not hmac.compare_digest(validator.compute_hash(body_text).encode(), expected_hash.encode()):
            return refuse("body does not match bodySHA256")
        params = body_text
    elif form is None:
        if raw_body:
            return refuse("body is neither form-encoded nor covered by bodySHA256")
        params = _MultiDict()
    else:
        try:
            params = _MultiDict(_normalize_form(form))
        except BadRequest:
            return refuse("malformed form parameters")

    for candidate in candidates:
        try:
            if validator.validate(candidate, params, signature, algorithm=algorithm):
                return Verdict(True, "", signed_url=signed_url)
        except (ValueError, TypeError):
            return refuse("invalid URL")
    return refuse("signature does not match")


def _matches_exactly(
    auth_token: str, url: str, form: Mapping[str, Sequence[str]], signature: str, algorithm: str
) -> bool:
    """The common case, cheaply: the signature is Twilio's HMAC over exactly this URL and form
    (the SDK's string: URL, then each name and value, names sorted, a name's distinct values
    sorted). True only on a match; anything else (a port variant, a trailing slash, odd
    input) is left to the SDK's full check, which also words the refusal."""
    digest = _HASHES.get(algorithm.upper())
    if digest is None or type(form) is not dict:
        return False
    parts = [url]
    try:
        for name in sorted(form):
            values = form[name]
            if type(values) is not list:
                return False
            if len(values) == 1:
                parts += (name, values[0])
                continue
            for value in sorted(set(values)):
                parts += (name, value)
        text = "".join(parts)
        expected = base64.b64encode(hmac.digest(auth_token.encode("utf-8"), text.encode("utf-8"), digest))
    except (TypeError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))


def _normalize_form(form: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """A dict of lists of str; a bare str value counts as one value, not as characters."""
    out: dict[str, list[str]] = {}
    for name, values in _items(form):
        if not isinstance(name, str):
            raise BadRequest("form field name is not text")
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, (list, tuple)):
            raise BadRequest(f"form field {name[:64]!r} has a non-text value")
        items = list(values)
        if not all(isinstance(value, str) for value in items):
            raise BadRequest(f"form field {name[:64]!r} has a non-text value")
        out[name] = items
    return out


# --- callbacks ------------------------------------------------------------------------------


def _label(name: str) -> str:
    """A field name fit for an error message: short, and quoted when not plain ASCII."""
    return name if len(name) <= 64 and _VISIBLE_ASCII.fullmatch(name) else repr(name[:64])


def _flatten(params: Mapping[str, Sequence[str]]) -> dict[str, str | list[str]]:
    """Validate field names/values and flatten single values: the timeline's `params`."""
    if not isinstance(params, Mapping):
        raise BadRequest("callback parameters must be a mapping")
    if len(params) > MAX_FIELDS:
        raise BadRequest(f"too many fields (over {MAX_FIELDS})")
    flat: dict[str, str | list[str]] = {}
    for name, values in _items(params):
        if not isinstance(name, str):
            raise BadRequest("field name is not text")
        if len(name) > MAX_NAME_CHARS:
            raise BadRequest(f"field name too long (over {MAX_NAME_CHARS} characters)")
        if type(values) is list:  # a parsed form's: checked as it is, copied only when kept as a list
            items = values
        elif isinstance(values, str):
            items = [values]
        elif isinstance(values, Sequence):
            items = list(values)
        else:
            raise BadRequest(f"{_label(name)} must be text")
        if len(items) > MAX_FIELDS:
            raise BadRequest(f"{_label(name)} has too many values")
        for value in items:
            if not isinstance(value, str):
                raise BadRequest(f"{_label(name)} must be text")
            if len(value) > MAX_VALUE_CHARS:
                raise BadRequest(f"{_label(name)} too long (over {MAX_VALUE_CHARS} characters)")
        if not items:
            continue
        flat[name] = items[0] if len(items) == 1 else list(items)
    return flat


def _single(flat: Mapping[str, str | list[str]], name: str) -> str | None:
    """One field's value; repeated identical values collapse, differing ones are refused."""
    value = flat.get(name)
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise BadRequest(f"conflicting values for {name}")
        value = value[0]
    return value


flatten_fields = _flatten  # the same form-field checks for Plivo's callbacks
single_field = _single


def _parse_seconds(value: str | None) -> int | None:
    if value is None or not _DIGITS.fullmatch(value.strip()):
        return None
    return int(value.strip())


field_seconds = _parse_seconds  # a whole number of seconds in a form field (Plivo's Duration too)


def parse_twilio_callback(
    params: Mapping[str, Sequence[str]],
    *,
    kind: str = "status",
    provider: str = PROVIDER,
    max_call_sid_chars: int = MAX_CALL_SID_CHARS,
) -> CallUpdate:
    """Normalize a Twilio status or AMD callback (form body or GET query) into a `CallUpdate`.

    `CallSid` is required (visible ASCII, at most `max_call_sid_chars`); an unknown `CallStatus`
    keeps its raw word with state None; `SequenceNumber` must be a non-negative integer; an
    unparseable `Timestamp` or `CallDuration` becomes None. Raises `BadRequest` only.
    `provider` names whose status row maps `CallStatus`: Telnyx's TeXML callbacks carry the
    same fields (see `gateway.providers.telnyx`).
    """
    flat = _flatten(params)
    call_sid = _single(flat, "CallSid")
    if not call_sid:
        raise BadRequest("missing CallSid")
    if len(call_sid) > max_call_sid_chars or not _VISIBLE_ASCII.fullmatch(call_sid):
        raise BadRequest("CallSid is not a valid identifier")

    raw_status = _single(flat, "CallStatus") or None
    answered_by = _single(flat, "AnsweredBy") or None
    voicemail = ANSWERED_BY_VOICEMAIL.get(answered_by.strip().lower()) if answered_by else None

    sequence_text = _single(flat, "SequenceNumber")
    sequence: int | None = None
    if sequence_text is not None and sequence_text != "":
        if not _DIGITS.fullmatch(sequence_text.strip()):
            raise BadRequest("SequenceNumber is not a non-negative integer")
        sequence = int(sequence_text.strip())

    direction_raw = _single(flat, "Direction")
    direction = DIRECTIONS.get(direction_raw.strip().lower()) if direction_raw else None

    return CallUpdate(
        provider=provider,
        kind=kind,
        provider_call_id=call_sid,
        raw_status=raw_status,
        state=normalize_status(provider, raw_status),
        voicemail=voicemail,
        answered_by=answered_by,
        sequence=sequence,
        occurred_at=rfc2822_utc(_single(flat, "Timestamp")),
        from_number=_single(flat, "From") or None,
        to_number=_single(flat, "To") or None,
        direction=direction,
        duration=_parse_seconds(_single(flat, "CallDuration")),
        params=flat,
    )


# --- TwiML ----------------------------------------------------------------------------------


def _check_xml_text(what: str, value: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if _XML_INVALID.search(value):
        raise ValueError(f"{what} contains a character XML cannot carry")


def render_connect_twiml(ws_url: str, parameters: Mapping[str, str], *, allow_insecure: bool = False) -> str:
    """TwiML that connects the call to a bidirectional media stream at `ws_url`.

    Each item of `parameters` becomes a `<Parameter>` (it arrives in the stream's
    `start.customParameters`). `ws_url` must be `wss://` with a host and no query string or
    fragment (Twilio refuses query strings on `<Stream url>`); ValueError otherwise.
    `allow_insecure` also admits `ws://`, for loopback development and simulators only.
    """
    _check_xml_text("stream URL", ws_url)
    parts = urlsplit(ws_url)
    if parts.scheme not in (("wss", "ws") if allow_insecure else ("wss",)) or not parts.netloc:
        raise ValueError("stream URL must be an absolute wss:// URL")
    if "?" in ws_url or "#" in ws_url:
        raise ValueError("stream URL must not have a query string or fragment")
    response = VoiceResponse()
    stream = response.connect().stream(url=ws_url)
    for name, value in parameters.items():
        _check_xml_text("parameter name", name)
        _check_xml_text(f"parameter {name[:64]!r}", value)
        if not name:
            raise ValueError("parameter name must not be empty")
        if len(name) + len(value) >= MAX_PARAMETER_CHARS:
            raise ValueError(f"parameter {name[:64]!r}: name and value must be under {MAX_PARAMETER_CHARS} characters")
        stream.parameter(name=name, value=value)
    xml: str = response.to_xml()  # the SDK is untyped
    return xml


def render_hangup_twiml(reason: str | None = None) -> str:
    """TwiML that refuses or ends a call.

    No reason: `<Hangup/>` (works at any point). "rejected" or "busy": `<Reject reason=…/>`,
    which declines an inbound call before it is answered, so it is not billed. Other reasons
    are a ValueError.
    """
    response = VoiceResponse()
    if reason is None:
        response.hangup()
    elif reason in ("rejected", "busy"):
        response.reject(reason=reason)
    else:
        raise ValueError('reason must be None, "rejected" or "busy"')
    xml: str = response.to_xml()  # the SDK is untyped
    return xml
