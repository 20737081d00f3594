"""One delivery attempt: build the request (pure) and send it (the I/O edge).

`build_request` renders the URL, headers and body, adds auth headers and the signature. It runs
once per attempt: the message id stays, the timestamp (and header auth's `_auth.*`) are fresh.
It records every secret value it touched, so that `PreparedRequest.redacted()` and everything in
an `AttemptResult` can be logged and stored without them: each `{{secret.NAME}}` value used, the
signing secrets, and the whole value of each header made by the `api_key`, `bearer_token`,
`basic_auth` and `custom_header` auth types (literal credentials included). `header` auth values
are redacted where they contain secrets while its timestamps and signatures stay readable, so
its credentials belong in `{{secret.NAME}}`.

The body is the rendered `payload_template` as JSON when there is one; otherwise POST, PUT and
PATCH carry the event envelope `{"type", "timestamp", "data"}` and GET and DELETE carry none. An
attempt's record (`AttemptResult.request`) shows a rendered body, and `body: null` for the
envelope, which is the delivery's event (the API shows it with the delivery).
The template context gets `event` (the envelope) unless the caller already set it.

`send_attempt` sends through the endpoint's guarded connection pool (`clients.Http1Pool`),
without following redirects, reads at most `MAX_BODY_BYTES` of the answer and classifies it.
For OAuth2 it gets the token first (through the endpoint's guarded httpx client) and, after a
401, invalidates it and sends once more. The whole attempt, token fetch, waiting for another
attempt's fetch and the resend included, ends within the subscription's timeout (an attempt
must end inside its lease); `latency_ms` covers all of it.

Whatever the endpoint answers is data: the body is parsed as JSON only within bounds
(`MAX_BODY_BYTES`, `MAX_JSON_DEPTH` levels); a body that is not (or not readable) JSON leaves the
success rule and response mapping nothing to look at, and the attempt's record says so when
either wanted it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import httpx

from gateway import jsontext
from gateway.errors import GatewayError
from gateway.redact import Redactor, basic_forms, credential_forms, is_credential_header, redact_url, url_secrets
from gateway.webhooks import ecmascript_json
from gateway.webhooks.auth import (
    AuthError,
    ClientCertificate,
    OAuth2Grant,
    auth_headers,
    client_certificate,
    oauth2_grant,
)
from gateway.webhooks.clients import Answer, EndpointClients, Http1Pool
from gateway.webhooks.policy import (
    Outcome,
    classify_error,
    classify_response,
    parse_retry_after,
)
from gateway.webhooks.signing import DEFAULT_HEX_HEADER, signature_headers
from gateway.webhooks.ssrf import DestinationRefused
from gateway.webhooks.subscription import (
    DialgenSigning,
    HeaderAuth,
    HexSigning,
    MtlsAuth,
    OAuth2ClientCredentialsAuth,
    StandardSigning,
    Subscription,
)
from gateway.webhooks.templates import Renderer, TemplateError

RESPONSE_TEXT_LIMIT = 2048
MAX_BODY_BYTES = 256 * 1024
MAX_JSON_DEPTH = 64  # deeper answers are not parsed (and could not be stored: orjson writes 255 levels at most)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestBuildError(GatewayError, ValueError):
    """The request could not be built (missing secret, bad rendered URL or header)."""


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready to send. Holds secrets: log only `redacted()`."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    message_id: str
    timestamp: int
    sensitive: frozenset[str] = field(default=frozenset(), repr=False)
    oauth2: OAuth2Grant | None = field(default=None, repr=False)
    certificate: ClientCertificate | None = field(default=None, repr=False)
    rendered_body: bool = False  # the body came from `payload_template` (else: the event envelope or none)

    def redactor(self, *extra: str) -> Redactor:
        """A redactor for this request's secrets (plus `extra`, e.g. an OAuth2 token)."""
        return Redactor([*self.sensitive, *extra]) if extra else _redactor(self.sensitive)

    def redacted(
        self, *extra: str, headers: Mapping[str, str] | None = None, redactor: Redactor | None = None, body: bool = True
    ) -> dict[str, Any]:
        """Method, URL, headers (these, or the request's own) and body text (unless `body` is
        false: None) with every secret replaced by `[redacted]`."""
        redactor = redactor or self.redactor(*extra)
        shown = self.headers if headers is None else headers
        return {
            "method": self.method,
            "url": redact_url(redactor.text(self.url)),
            "headers": {name: redactor.text(value) for name, value in shown.items()},
            "body": redactor.text(self.body.decode("utf-8", "replace")) if body else None,
        }

    def __repr__(self) -> str:
        return f"PreparedRequest({self.redacted()!r})"


@dataclass(frozen=True)
class AttemptResult:
    """What happened on one attempt; safe to log and store (secrets redacted)."""

    outcome: Outcome
    status: int | None
    latency_ms: float
    response_text: str
    response_json: Any
    error: str | None
    retry_after: float | None
    request: dict[str, Any]
    unparsed: str | None = None  # why a non-empty answer was not read as JSON (too deep, too long, not JSON)

    @property
    def success(self) -> bool:
        """Whether the attempt met the subscription's success rule."""
        return self.outcome is Outcome.SUCCESS


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 5.5: a field value has no control character but HTAB


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a header value (a line break would end the header and
    start another: a smuggled header), or None."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    return (
        f"the value has a control character (U+{ord(found.group()):04X} at {found.start()}), e.g. a line break"
        " in call data it was rendered from; it was not sent"
    )


def _set_header(headers: dict[str, str], name: str, value: str) -> None:
    for existing in [key for key in headers if key.lower() == name.lower()]:
        del headers[existing]
    problem = header_value_problem(value)
    if problem is not None:
        raise RequestBuildError(f"header {name}: {problem}")
    headers[name] = value


_json_bytes = jsontext.dumps_bytes


@lru_cache(maxsize=256)
def _redactor(secrets: frozenset[str]) -> Redactor:
    """Redactors are immutable and the same few secret sets recur on every attempt."""
    return Redactor(secrets)


@lru_cache(maxsize=4096)
def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise RequestBuildError(f"url: rendered URL is invalid: {error}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RequestBuildError("url: rendered URL needs http(s) and a host")


def _signing_secrets(subscription: Subscription, renderer: Renderer) -> list[str]:
    signing = subscription.signing
    if isinstance(signing, StandardSigning):
        return [renderer.text(secret, f"signing.secrets[{index}]") for index, secret in enumerate(signing.secrets)]
    if isinstance(signing, HexSigning):
        return [renderer.text(signing.secret, "signing.secret")]
    return []


def _payload(subscription: Subscription, renderer: Renderer) -> Any:
    """The rendered `payload_template`, with `payload_defaults` filling keys it left unset."""
    value = renderer.value(subscription.payload_template, "payload_template")
    if isinstance(value, dict):
        for key, template in subscription.payload_defaults.items():
            if key not in value:
                value[key] = renderer.value(template, f"payload_defaults.{key}")
    return value


def build_request(
    subscription: Subscription,
    event_envelope: Mapping[str, Any] | None,
    context: Mapping[str, Any],
    secrets: Mapping[str, str],
    *,
    message_id: str,
    now: float,
    envelope_body: bytes | None = None,
) -> PreparedRequest:
    """Render, authenticate and sign one attempt of `event_envelope` for `subscription`.

    `now` is Unix seconds (the `webhook-timestamp`); `message_id` is stable across retries.
    `envelope_body`, when given, is the envelope as JSON already (`Event.envelope_json`): the
    default body as it is. `event_envelope` may then be None if no template reads `event`.
    Raises `RequestBuildError` (message free of secret values) when it cannot be built.
    """
    full_context = dict(context)
    if event_envelope is not None and "event" not in full_context:
        full_context["event"] = dict(event_envelope)
    renderer = Renderer(full_context, secrets)
    try:
        url = renderer.url(subscription.url, "url")
        _check_url(url)
        # Dialgen's receivers sign `JSON.stringify(req.body)`: write what that gives back.
        as_js = isinstance(subscription.signing, DialgenSigning)
        encode = ecmascript_json.dumps if as_js else _json_bytes
        if subscription.payload_template is not None:
            body = encode(_payload(subscription, renderer))
        elif subscription.method not in BODY_METHODS:
            body = b""
        elif envelope_body is not None:
            body = ecmascript_json.dumps(jsontext.loads(envelope_body)) if as_js else envelope_body
        else:
            body = encode(dict(event_envelope or {}))
        headers: dict[str, str] = {}
        if body:
            headers["Content-Type"] = "application/json"
        sensitive: set[str] = set(url_secrets(url))  # a literal user:pass@ or ?token= in the URL
        for name, template in subscription.headers.items():
            value = renderer.text(template, f"headers.{name}")
            _set_header(headers, name, value)
            if is_credential_header(name):
                sensitive.update(credential_forms(value))
        for name, value in auth_headers(
            subscription.auth, renderer, method=subscription.method, url=url, body=body, now=now
        ).items():
            _set_header(headers, name, value)
            if not isinstance(subscription.auth, HeaderAuth):
                # The whole credential, literal or encoded, and each form an endpoint may echo
                # it in: the bearer token alone, Basic's base64, `user:pass` and the password.
                sensitive.update(credential_forms(value))
        keys = _signing_secrets(subscription, renderer)
        sensitive.update(keys)
        try:
            signed = signature_headers(
                subscription.signing.scheme,
                keys,
                message_id=message_id,
                timestamp=int(now),
                body=body,
                header=getattr(subscription.signing, "header", DEFAULT_HEX_HEADER),
            )
        except ValueError as error:
            raise RequestBuildError(f"signing: {error}") from None
        for name, value in signed.items():
            _set_header(headers, name, value)
        grant = certificate = None
        if isinstance(subscription.auth, OAuth2ClientCredentialsAuth):
            grant = oauth2_grant(subscription.auth, renderer)
            sensitive.update([*basic_forms(grant.client_id, grant.client_secret), *url_secrets(grant.token_url)])
        elif isinstance(subscription.auth, MtlsAuth):
            certificate = client_certificate(subscription.auth, renderer)
            if certificate.password:
                sensitive.add(certificate.password)
    except TemplateError as error:
        raise RequestBuildError(str(error)) from None
    return PreparedRequest(
        method=subscription.method,
        url=url,
        headers=headers,
        body=body,
        message_id=message_id,
        timestamp=int(now),
        sensitive=frozenset(sensitive | renderer.used_secrets),
        oauth2=grant,
        certificate=certificate,
        rendered_body=subscription.payload_template is not None,
    )


def _parse_json(body: bytes) -> tuple[Any, str | None]:
    """The answer's JSON, or None and why not (None for an empty body: nothing to say)."""
    if not body.strip():
        return None, None
    try:
        return jsontext.loads_bounded(body, max_depth=MAX_JSON_DEPTH, max_bytes=MAX_BODY_BYTES), None
    except ValueError as error:
        return None, str(error)


def _error_kind(error: BaseException) -> str:
    if isinstance(error, DestinationRefused):
        return "refused"
    if isinstance(error, (httpx.InvalidURL, httpx.UnsupportedProtocol, RequestBuildError)):
        return "invalid"
    if isinstance(error, AuthError):
        return "auth" if error.retryable else "invalid"
    if isinstance(error, (httpx.TimeoutException, TimeoutError)):
        return "timeout"
    return "network"


async def _exchange_with_token(
    clients: EndpointClients,
    pool: Http1Pool,
    prepared: PreparedRequest,
    subscription: Subscription,
    headers: dict[str, str],
    tokens: list[str],
) -> Answer:
    """One exchange, first setting a (cached) OAuth2 bearer token when the grant needs one
    (the token request goes through the endpoint's guarded httpx client). The caller bounds
    it in time."""
    if prepared.oauth2 is not None:
        client = clients.client_for(subscription, prepared.certificate)
        token = await clients.tokens.token(prepared.oauth2, client, timeout=subscription.timeout)
        tokens.append(token)
        headers["Authorization"] = f"Bearer {token}"
    return await pool.request(prepared.method, prepared.url, headers, prepared.body, max_body=MAX_BODY_BYTES)


async def send_attempt(
    clients: EndpointClients, prepared: PreparedRequest, subscription: Subscription
) -> AttemptResult:
    """Send `prepared` once (plus one retry after an OAuth2 401) and classify the answer."""
    started = time.perf_counter()
    headers = dict(prepared.headers)
    tokens: list[str] = []
    answer: Answer | None = None
    failure: BaseException | None = None
    try:
        async with asyncio.timeout(subscription.timeout):  # the whole attempt, token fetches included
            pool = clients.pool_for(subscription, prepared.certificate)
            answer = await _exchange_with_token(clients, pool, prepared, subscription, headers, tokens)
            if answer.status == 401 and prepared.oauth2 is not None:
                clients.tokens.invalidate(prepared.oauth2, tokens[-1])
                answer = None
                answer = await _exchange_with_token(clients, pool, prepared, subscription, headers, tokens)
    except (DestinationRefused, AuthError, httpx.HTTPError, TimeoutError, OSError) as error:
        failure = error
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    redactor = prepared.redactor(*tokens)
    # The attempt's record keeps a rendered body; the event envelope is the delivery's event,
    # stored once with it (a copy per attempt was a third of what an attempt wrote).
    request_view = prepared.redacted(headers=headers, redactor=redactor, body=prepared.rendered_body)
    if answer is None:
        assert failure is not None
        detail = str(failure) or "no answer within the timeout"
        return AttemptResult(
            outcome=classify_error(_error_kind(failure)),
            status=None,
            latency_ms=latency_ms,
            response_text="",
            response_json=None,
            error=redactor.text(f"{type(failure).__name__}: {detail}"),
            retry_after=None,
            request=request_view,
        )
    text = redactor.text(answer.body.decode("utf-8", "replace"))[:RESPONSE_TEXT_LIMIT]
    body_json, unparsed = _parse_json(answer.body)
    return AttemptResult(
        outcome=classify_response(answer.status, body_json, subscription.success),
        status=answer.status,
        latency_ms=latency_ms,
        response_text=text,
        response_json=redactor.value(body_json),
        error=None,
        retry_after=parse_retry_after(answer.headers.get("retry-after"), time.time()),
        request=request_view,
        unparsed=unparsed,
    )
