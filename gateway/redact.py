"""The one place credentials are taken out of text before it is logged, stored or sent.

Two jobs, both pure:
- `redact_url`: a URL as it may be shown, its userinfo password and the values of
  credential-like query parameters (`token`, `api_key`, `key`, `access_token`, `password`,
  anything ending `_token`/`_key`/`_secret`...) replaced by `[redacted]`; `url_secrets` are the
  values it took out, for a `Redactor` to find wherever else the URL was quoted (an exception's
  text, a library's message).
- `Redactor`: "replace these known secret values", in every encoding they may travel in:
  raw, percent-encoded (`quote`, `quote_plus`), JSON-escaped. `credential_forms` gives the
  other forms of a credential header's value (`Bearer T` -> `T`; `Basic B` -> `B`, the decoded
  `user:pass` and the password), so an endpoint that echoes what it was sent is redacted too.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import SplitResult, quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

REDACTED = "[redacted]"

_CREDENTIAL_PARAMS = frozenset(
    {
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "api_key",
        "apikey",
        "api-key",
        "key",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "pwd",
        "pass",
        "auth",
        "authorization",
        "signature",
        "sig",
        "jwt",
        "bearer",
        "session",
        "sessionid",
        "session_id",
        "credential",
        "credentials",
        "x-api-key",
        "code",
    }
)
_CREDENTIAL_SUFFIXES = ("_token", "-token", "_key", "-key", "_secret", "-secret", "_password", "password")


def is_credential_param(name: str) -> bool:
    """Whether a query parameter (or header) named `name` carries a credential."""
    lowered = name.strip().lower()
    return lowered in _CREDENTIAL_PARAMS or lowered.endswith(_CREDENTIAL_SUFFIXES)


_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-auth-token"})


def is_credential_header(name: str) -> bool:
    """Whether a request header named `name` carries a credential."""
    return name.strip().lower() in _CREDENTIAL_HEADERS or is_credential_param(name)


def _split(url: str) -> SplitResult | None:
    if "://" not in url:
        return None
    try:
        return urlsplit(url)
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """`url` with its password and credential-like query values replaced (anything not a URL
    with a scheme is returned as is)."""
    parts = _split(url)
    if parts is None:
        return url
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}"
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, eq, value = piece.partition("=")
            pieces.append(f"{name}={REDACTED}" if eq and value and is_credential_param(unquote_plus(name)) else piece)
        query = "&".join(pieces)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str | None) -> list[str]:
    """The credential values `redact_url` takes out of `url` (raw and decoded)."""
    parts = _split(url or "")
    if parts is None:
        return []
    found: list[str] = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    for piece in parts.query.split("&") if parts.query else ():
        name, eq, value = piece.partition("=")
        if eq and value and is_credential_param(unquote_plus(name)):
            found.append(value)
    out: list[str] = []
    for value in found:
        for form in (value, unquote(value), unquote_plus(value)):
            if form and form not in out:
                out.append(form)
    return out


def credential_forms(value: str) -> list[str]:
    """`value` (a credential header's value) and the other forms its secret is known by."""
    out = [value]
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if rest and scheme.lower() in ("bearer", "token", "basic", "digest", "apikey"):
        out.append(rest)
    if rest and scheme.lower() == "basic":
        try:
            pair = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            pair = ""
        if pair:
            out.append(pair)
            password = pair.partition(":")[2]
            if password:
                out.append(password)
    return [v for v in out if v]


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """Every form of the credentials in `headers` (those whose name says they carry one)."""
    return [form for name, value in headers.items() if is_credential_header(name) for form in credential_forms(value)]


def basic_forms(username: str, password: str) -> list[str]:
    """A Basic credential's forms as it is sent (`base64(user:pass)`) and as it is known."""
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return [encoded, f"{username}:{password}", password]


class Redactor:
    """Replaces every known secret value (and its URL- and JSON-escaped forms) with `[redacted]`."""

    MARK = REDACTED

    def __init__(self, secrets: Iterable[str] = (), *, min_length: int = 1) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < min_length:
                continue
            variants.update({secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]})
        ordered = sorted((v for v in variants if v), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        """`text` with every secret replaced."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(self.MARK, text)

    def value(self, value: Any) -> Any:
        """A JSON-like value with secrets replaced in every string (keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value
