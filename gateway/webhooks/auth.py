"""How a request proves who sends it, per subscription `auth` type.

- `none`; `api_key` (header, default `X-API-Key`); `bearer_token`; `basic_auth`;
  `custom_header`: one header each, from values that may be templates (`{{secret.NAME}}`).
- `header`: headers built from templates, for APIs with their own signature scheme. Besides
  the template context and `{{secret.NAME}}` they see
  `{{_auth.uuid}}` (fresh per attempt), `{{_auth.timestamp}}` (Unix seconds),
  `{{_auth.timestamp_micro}}`, `{{_request.method}}`, `{{_request.url}}`, `{{_request.body}}`,
  the `variables` block as `{{vars.NAME}}` (rendered lazily, may chain, cycles are errors),
  and two functions whose arguments are paths or quoted strings joined with `+`:
  `{{hmac_sha256(KEY, TEXT)}}` (hex) and `{{hmac_sha256_base64(KEY, TEXT)}}`, keyed with the
  UTF-8 bytes of KEY. Example:
  `variables: {sig: "{{hmac_sha256(secret.API_KEY, _auth.timestamp + '.' + _request.body)}}"}`,
  `headers: {X-Signature: "t={{_auth.timestamp}},v1={{vars.sig}}"}`.
- `oauth2_client_credentials`: a bearer token from the token endpoint, cached per token URL,
  client id, scope (and client secret, so a rotated secret gets a new token), refreshed 30 s
  before it expires, with one fetch in flight per key that every attempt needing the token
  shares (each waits for it only within its own deadline, and a fetch ends within the
  timeout it was started with: a slow token endpoint fails the waiting attempts together,
  instead of each fetching in turn behind a lock); a 401 from the endpoint invalidates the
  token and the sender retries once (`OAuth2TokenCache`).
- `mtls`: a client certificate in the TLS handshake (`ssl_context_for`), one context per
  endpoint (the sender's client cache holds it).

The sender treats the values of the single-header types as credentials and redacts them whole;
for `header` auth it redacts the secrets used (see `gateway.webhooks.sender`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import httpx

from gateway import jsontext
from gateway.errors import GatewayError
from gateway.webhooks.subscription import (
    ApiKeyAuth,
    Auth,
    BasicAuth,
    BearerTokenAuth,
    CustomHeaderAuth,
    HeaderAuth,
    MtlsAuth,
    OAuth2ClientCredentialsAuth,
)
from gateway.webhooks.templates import Renderer, TemplateError

REFRESH_MARGIN = 30.0
DEFAULT_TOKEN_LIFETIME = 3600.0
MAX_TOKEN_ANSWER = 64 * 1024  # bytes of a token endpoint's answer read (and parsed) at most


class AuthError(GatewayError):
    """Authentication could not be prepared; `retryable` when a later attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _hmac_hex(key: str, text: str) -> str:
    return hmac.new(key.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def _hmac_base64(key: str, text: str) -> str:
    digest = hmac.new(key.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


HEADER_AUTH_FUNCTIONS: Mapping[str, Callable[[str, str], str]] = {
    "hmac_sha256": _hmac_hex,
    "hmac_sha256_base64": _hmac_base64,
}


class _LazyVariables(Mapping[str, str]):
    """Header auth `variables`, each rendered on first use, detecting cycles."""

    def __init__(self, templates: Mapping[str, str]) -> None:
        self._templates = templates
        self._values: dict[str, str] = {}
        self._resolving: set[str] = set()
        self.renderer: Renderer | None = None

    def __getitem__(self, name: str) -> str:
        if name in self._values:
            return self._values[name]
        if name not in self._templates:
            raise KeyError(name)
        if name in self._resolving:
            raise TemplateError(f"auth.variables.{name}: refers to itself")
        assert self.renderer is not None
        self._resolving.add(name)
        try:
            value = self.renderer.text(self._templates[name], f"auth.variables.{name}")
        finally:
            self._resolving.discard(name)
        self._values[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._templates

    def __iter__(self) -> Iterator[str]:
        return iter(self._templates)

    def __len__(self) -> int:
        return len(self._templates)


def _header_auth(
    auth: HeaderAuth,
    renderer: Renderer,
    *,
    method: str,
    url: str,
    body: bytes,
    now: float,
    new_uuid: Callable[[], str],
) -> dict[str, str]:
    variables = _LazyVariables(auth.variables)
    roots = {
        "_auth": {
            "uuid": new_uuid(),
            "timestamp": int(now),
            "timestamp_micro": int(now * 1_000_000),
        },
        "_request": {"method": method, "url": url, "body": body.decode("utf-8", "replace")},
        "vars": variables,
    }
    scoped = renderer.with_roots(roots, HEADER_AUTH_FUNCTIONS)
    variables.renderer = scoped
    return {name: scoped.text(template, f"auth.headers.{name}") for name, template in auth.headers.items()}


def auth_headers(
    auth: Auth,
    renderer: Renderer,
    *,
    method: str,
    url: str,
    body: bytes,
    now: float,
    new_uuid: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> dict[str, str]:
    """Headers for every auth type that needs no I/O (OAuth2 and mTLS are applied when sending)."""
    if isinstance(auth, ApiKeyAuth):
        return {auth.header: renderer.text(auth.value, "auth.value")}
    if isinstance(auth, BearerTokenAuth):
        return {"Authorization": "Bearer " + renderer.text(auth.token, "auth.token")}
    if isinstance(auth, BasicAuth):
        username = renderer.text(auth.username, "auth.username")
        password = renderer.text(auth.password, "auth.password")
        pair = f"{username}:{password}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")}
    if isinstance(auth, CustomHeaderAuth):
        return {auth.name: renderer.text(auth.value, "auth.value")}
    if isinstance(auth, HeaderAuth):
        return _header_auth(auth, renderer, method=method, url=url, body=body, now=now, new_uuid=new_uuid)
    return {}


@dataclass(frozen=True)
class OAuth2Grant:
    """A rendered client-credentials grant (the secret is kept out of repr)."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    client_auth: str = "basic"

    @property
    def cache_key(self) -> TokenKey:
        """Token URL, client id, scope, and a digest of the secret."""
        digest = hashlib.sha256(self.client_secret.encode("utf-8")).hexdigest()
        return (self.token_url, self.client_id, self.scope, digest)


def oauth2_grant(auth: OAuth2ClientCredentialsAuth, renderer: Renderer) -> OAuth2Grant:
    """The grant with its templates rendered."""
    return OAuth2Grant(
        token_url=renderer.url(auth.token_url, "auth.token_url"),
        client_id=renderer.text(auth.client_id, "auth.client_id"),
        client_secret=renderer.text(auth.client_secret, "auth.client_secret"),
        scope=auth.scope,
        client_auth=auth.client_auth,
    )


TokenKey = tuple[str, str, str | None, str]


@dataclass
class _Token:
    value: str
    refresh_at: float


class OAuth2TokenCache:
    """Access tokens per grant, refreshed before expiry, one fetch in flight per grant, shared
    by everyone waiting for it (see the module)."""

    def __init__(
        self,
        *,
        refresh_margin: float = REFRESH_MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._margin = refresh_margin
        self._clock = clock
        self._tokens: dict[TokenKey, _Token] = {}
        self._fetching: dict[TokenKey, asyncio.Future[_Token]] = {}

    async def token(self, grant: OAuth2Grant, client: httpx.AsyncClient, *, timeout: float = 30.0) -> str:
        """A valid access token for `grant`, fetched with `client` only when needed (within
        `timeout` seconds). Cancelling the wait (the attempt's deadline) leaves the shared
        fetch running for the others."""
        key = grant.cache_key
        cached = self._tokens.get(key)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        fetch = self._fetching.get(key)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch_within(grant, client, timeout))
            self._fetching[key] = fetch
            fetch.add_done_callback(lambda done: self._fetched(key, done))
        return (await asyncio.shield(fetch)).value

    def _fetched(self, key: TokenKey, done: asyncio.Future[_Token]) -> None:
        if self._fetching.get(key) is done:
            del self._fetching[key]
        if done.cancelled():
            return
        if done.exception() is None:  # read here too, so that one nobody waited for any more is not reported
            self._tokens[key] = done.result()

    async def _fetch_within(self, grant: OAuth2Grant, client: httpx.AsyncClient, timeout: float) -> _Token:
        try:
            async with asyncio.timeout(timeout):
                return await self._fetch(grant, client, timeout)
        except TimeoutError:
            raise AuthError(
                f"token endpoint {grant.token_url} sent no token within {timeout:g} s", retryable=True
            ) from None

    def invalidate(self, grant: OAuth2Grant, token: str | None = None) -> None:
        """Forget the grant's token (only if it is still `token`, when given: a 401 on an old
        token must not throw away one another request has just fetched)."""
        cached = self._tokens.get(grant.cache_key)
        if cached is not None and (token is None or cached.value == token):
            del self._tokens[grant.cache_key]

    async def _fetch(self, grant: OAuth2Grant, client: httpx.AsyncClient, timeout: float) -> _Token:
        form = {"grant_type": "client_credentials"}
        if grant.scope:
            form["scope"] = grant.scope
        auth: tuple[str, str] | None = None
        if grant.client_auth == "basic":
            auth = (grant.client_id, grant.client_secret)
        else:
            form.update(client_id=grant.client_id, client_secret=grant.client_secret)
        started = self._clock()
        try:
            async with client.stream(
                "POST",
                grant.token_url,
                data=form,
                auth=auth,
                headers={"Accept": "application/json"},
                timeout=timeout,
            ) as response:
                status = response.status_code
                body = b""
                if status == 200:  # read what a token answer can need, no more
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_TOKEN_ANSWER:
                            break
        except httpx.HTTPError as error:
            raise AuthError(
                f"token endpoint {grant.token_url} unreachable: {type(error).__name__}",
                retryable=True,
            ) from None
        if status != 200:
            retryable = status in (408, 429) or status >= 500
            raise AuthError(
                f"token endpoint {grant.token_url} answered {status}",
                retryable=retryable,
            )
        try:
            payload = jsontext.loads_bounded(body, max_depth=16, max_bytes=MAX_TOKEN_ANSWER)
            value = payload["access_token"]
            lifetime = float(payload.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, KeyError, TypeError, AttributeError):
            value, lifetime = None, 0.0
        if not isinstance(value, str) or not value:
            raise AuthError(f"token endpoint {grant.token_url} sent no access_token", retryable=True)
        margin = min(self._margin, lifetime / 2)
        return _Token(value=value, refresh_at=started + lifetime - margin)


@dataclass(frozen=True)
class ClientCertificate:
    """A rendered mTLS configuration: PEM file paths and the key's password (kept out of repr)."""

    cert: str
    key: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None


def client_certificate(auth: MtlsAuth, renderer: Renderer) -> ClientCertificate:
    """The mTLS configuration with its password template rendered."""
    password = None if auth.password is None else renderer.text(auth.password, "auth.password")
    return ClientCertificate(cert=auth.cert, key=auth.key, password=password, ca_bundle=auth.ca_bundle)


def ssl_context_for(certificate: ClientCertificate | None) -> ssl.SSLContext:
    """A TLS client context with the client certificate, if any, trusting `ca_bundle` or certifi."""
    try:
        if certificate is not None and certificate.ca_bundle:
            context = ssl.create_default_context(cafile=certificate.ca_bundle)
        else:
            context = httpx.create_ssl_context()
        if certificate is not None:
            context.load_cert_chain(certificate.cert, certificate.key, password=certificate.password)
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "reason", None)
        reason = reason or type(error).__name__
        raise AuthError(f"mtls: cannot load certificate files: {reason}", retryable=False) from None
    return context
