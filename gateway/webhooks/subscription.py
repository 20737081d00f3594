"""Webhook subscriptions: the public configuration contract, validated when it is loaded.

```yaml
webhooks:
  - name: crm
    events: ["call.ended", "conversation.*"]
    url: https://crm.example.com/calls/{{workflow_run_id}}
    auth: {type: bearer_token, token: "{{secret.CRM_TOKEN}}"}
    signing: {scheme: standard, secrets: ["whsec_..."]}
```

Every model forbids unknown keys, and every problem (unknown key, malformed template, glob, CIDR,
status class, JMESPath expression, signing secret) is reported with the path of the offending key,
so a typo stops start-up with a message naming it. Templates are checked here, once, so that
rendering at delivery time only fails on data (a missing secret), never on syntax.

`load_subscriptions` reads the YAML; `load_dograh_workflow` imports a Dograh workflow's webhook
nodes (see `gateway.webhooks.dograh`).
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jmespath.exceptions import JMESPathError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.calls.events import ALL_EVENTS
from gateway.errors import GatewayError
from gateway.webhooks.policy import compile_expression, parse_status_class
from gateway.webhooks.signing import DEFAULT_HEX_HEADER, decode_signing_secret
from gateway.webhooks.templates import (
    CONTEXT_ROOTS,
    TemplateError,
    placeholder_paths,
    secret_names,
    validate_template,
)

DEFAULT_SCHEDULE: tuple[float, ...] = (1.0, 5.0, 25.0, 120.0, 600.0, 3600.0)
HEADER_AUTH_ROOTS: frozenset[str] = CONTEXT_ROOTS | {"_auth", "_request", "vars"}
HEADER_AUTH_FUNCTION_NAMES: frozenset[str] = frozenset({"hmac_sha256", "hmac_sha256_base64"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_EVENT_GLOB = re.compile(r"[a-z0-9_.*?\[\]!-]+\Z")
_MAPPING_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_ONLY_SECRET = re.compile(r"\{\{\s*secret\.[A-Za-z_][A-Za-z0-9_]*\s*\}\}\Z")


class SubscriptionConfigError(GatewayError, ValueError):
    """Configuration that cannot be used; the message lists each problem with its key path."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _template(value: str, location: str, **kwargs: Any) -> str:
    try:
        validate_template(value, location, **kwargs)
    except TemplateError as error:
        raise ValueError(str(error)) from None
    return value


def _context_template(value: str) -> str:
    return _template(value, "")


def _header_auth_template(value: str) -> str:
    return _template(value, "", roots=HEADER_AUTH_ROOTS, functions=HEADER_AUTH_FUNCTION_NAMES)


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


Template = Annotated[str, AfterValidator(_context_template)]
"""Text that may use the template context and `{{secret.NAME}}`."""
AuthValue = Annotated[str, Field(min_length=1), AfterValidator(_context_template)]
HeaderName = Annotated[str, Field(min_length=1), AfterValidator(_header_name)]
HeaderAuthTemplate = Annotated[str, AfterValidator(_header_auth_template)]
VariableName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class NoAuth(_Model):
    """No authentication."""

    type: Literal["none"] = "none"


class ApiKeyAuth(_Model):
    """A key sent in a header (default `X-API-Key`)."""

    type: Literal["api_key"]
    header: HeaderName = "X-API-Key"
    value: AuthValue


class BearerTokenAuth(_Model):
    """`Authorization: Bearer <token>`."""

    type: Literal["bearer_token"]
    token: AuthValue


class BasicAuth(_Model):
    """HTTP Basic authentication."""

    type: Literal["basic_auth"]
    username: AuthValue
    password: AuthValue


class CustomHeaderAuth(_Model):
    """Any one header name and value."""

    type: Literal["custom_header"]
    name: HeaderName
    value: AuthValue


class OAuth2ClientCredentialsAuth(_Model):
    """OAuth2 client-credentials grant; the token is sent as a bearer token and cached."""

    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: AuthValue
    client_secret: AuthValue
    scope: str | None = None
    client_auth: Literal["basic", "body"] = "basic"

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("token_url must start with http:// or https://")
        return _template(value, "")


class MtlsAuth(_Model):
    """A client certificate presented in the TLS handshake (files in PEM)."""

    type: Literal["mtls"]
    cert: str
    key: str | None = None
    password: AuthValue | None = None
    ca_bundle: str | None = None


class HeaderAuth(_Model):
    """Headers built from templates, for APIs with their own signature schemes.

    `variables` are rendered lazily and may refer to each other as `{{vars.NAME}}`; besides the
    usual context and `{{secret.NAME}}`, both blocks see `{{_auth.uuid}}`, `{{_auth.timestamp}}`,
    `{{_auth.timestamp_micro}}`, `{{_request.method}}`, `{{_request.url}}`, `{{_request.body}}`
    and the functions `hmac_sha256(key, text)` (hex) and `hmac_sha256_base64(key, text)`.
    """

    type: Literal["header"]
    headers: dict[HeaderName, HeaderAuthTemplate] = Field(min_length=1)
    variables: dict[VariableName, HeaderAuthTemplate] = Field(default_factory=dict)


def _auth_type(value: Any) -> str:
    return str(value.get("type", "none")) if isinstance(value, dict) else value.type


def _signing_scheme(value: Any) -> str:
    return str(value.get("scheme", "standard")) if isinstance(value, dict) else value.scheme


AUTH_TYPES = (
    NoAuth,
    ApiKeyAuth,
    BearerTokenAuth,
    BasicAuth,
    CustomHeaderAuth,
    OAuth2ClientCredentialsAuth,
    MtlsAuth,
    HeaderAuth,
)

Auth = Annotated[
    Annotated[NoAuth, Tag("none")]
    | Annotated[ApiKeyAuth, Tag("api_key")]
    | Annotated[BearerTokenAuth, Tag("bearer_token")]
    | Annotated[BasicAuth, Tag("basic_auth")]
    | Annotated[CustomHeaderAuth, Tag("custom_header")]
    | Annotated[OAuth2ClientCredentialsAuth, Tag("oauth2_client_credentials")]
    | Annotated[MtlsAuth, Tag("mtls")]
    | Annotated[HeaderAuth, Tag("header")],
    Discriminator(
        _auth_type,
        custom_error_type="auth_type",
        custom_error_message="unknown auth type; use none, api_key, bearer_token, basic_auth, "
        "custom_header, oauth2_client_credentials, mtls or header",
    ),
]


def _signing_secret(value: str) -> str:
    if _ONLY_SECRET.match(value.strip()):
        return value
    if "{{" in value:
        raise ValueError("a signing secret is a literal or exactly one {{secret.NAME}}")
    decode_signing_secret(value)
    return value


class StandardSigning(_Model):
    """Standard Webhooks signatures; several secrets sign side by side during rotation.

    Each secret is a literal `whsec_...` or exactly `{{secret.NAME}}`. With no secrets (the
    default) requests carry `webhook-id` and `webhook-timestamp` but no signature."""

    scheme: Literal["standard"] = "standard"
    secrets: list[str] = Field(default_factory=list)

    @field_validator("secrets")
    @classmethod
    def _check_secrets(cls, value: list[str]) -> list[str]:
        for index, secret in enumerate(value):
            try:
                _signing_secret(secret)
            except ValueError as error:
                raise ValueError(f"secrets[{index}]: {error}") from None
        return value


class DialgenSigning(StandardSigning):
    """Standard Webhooks signatures plus Dialgen's `x-dialgen-signature` (hex HMAC-SHA256 of the
    body, keyed with the first secret's text as written); the body is written as JavaScript's
    `JSON.stringify` gives it back, which is what Dialgen's receivers sign."""

    scheme: Literal["dialgen"] = "dialgen"  # type: ignore[assignment]


class HexSigning(_Model):
    """Hex HMAC-SHA256 of the raw body in one header."""

    scheme: Literal["hmac_sha256_hex"]
    secret: str = Field(min_length=1)
    header: HeaderName = DEFAULT_HEX_HEADER

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: str) -> str:
        if "{{" in value and not _ONLY_SECRET.match(value.strip()):
            raise ValueError("a signing secret is a literal or exactly one {{secret.NAME}}")
        return value


class NoSigning(_Model):
    """No signature header (webhook-id and webhook-timestamp are still sent)."""

    scheme: Literal["none"]


Signing = Annotated[
    Annotated[StandardSigning, Tag("standard")]
    | Annotated[DialgenSigning, Tag("dialgen")]
    | Annotated[HexSigning, Tag("hmac_sha256_hex")]
    | Annotated[NoSigning, Tag("none")],
    Discriminator(
        _signing_scheme,
        custom_error_type="signing_scheme",
        custom_error_message="unknown signing scheme; use standard, dialgen, hmac_sha256_hex or none",
    ),
]


class RetryPolicy(_Model):
    """Delays (seconds) between attempts, their jitter fraction, and the total time allowed."""

    schedule: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: list(DEFAULT_SCHEDULE), max_length=100
    )
    jitter: float = Field(default=0.2, ge=0, lt=1)
    total_timeout: float = Field(default=86400.0, gt=0)


class SuccessRule(_Model):
    """Status classes that count as success and an optional JMESPath test of the JSON body."""

    status: list[str] = Field(default_factory=lambda: ["2xx"], min_length=1)
    expression: str | None = None

    @field_validator("status")
    @classmethod
    def _check_status(cls, value: list[str]) -> list[str]:
        for text in value:
            low, high = parse_status_class(text)
            if low < 200 or (low <= 399 and high >= 300):
                raise ValueError(
                    f"status class {text!r} includes 1xx or 3xx, which are never success (redirects are not followed)"
                )
        return value

    @field_validator("expression")
    @classmethod
    def _check_expression(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value


def _compile(expression: str) -> None:
    try:
        compile_expression(expression)
    except JMESPathError as error:
        raise ValueError(f"invalid JMESPath expression {expression!r}: {error}") from None


def _check_glob(pattern: str) -> str:
    if not _EVENT_GLOB.match(pattern):
        raise ValueError(f"event pattern {pattern!r} may only use a-z 0-9 _ . - and the globs * ? [ ] !")
    depth = 0
    for char in pattern:
        if char == "[":
            if depth:
                raise ValueError(f"event pattern {pattern!r} nests '['")
            depth = 1
        elif char == "]" and depth:
            depth = 0
    if depth:
        raise ValueError(f"event pattern {pattern!r} has '[' without ']'")
    return pattern


def _check_event_pattern(pattern: str) -> str:
    """A valid glob that matches at least one event the gateway emits (`gateway.calls.events`)."""
    _check_glob(pattern)
    if not any(fnmatch.fnmatchcase(name, pattern) for name in ALL_EVENTS):
        close = difflib.get_close_matches(pattern, ALL_EVENTS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; the events are listed in docs/webhooks.md"
        raise ValueError(f"{pattern!r} matches no event the gateway emits{hint}")
    return pattern


EventPattern = Annotated[str, AfterValidator(_check_event_pattern)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Subscription(_Model):
    """One outbound webhook endpoint and the events it receives."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$", min_length=1, max_length=64)
    enabled: bool = True
    events: list[EventPattern] = Field(min_length=1)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str
    headers: dict[HeaderName, Template] = Field(default_factory=dict)
    payload_template: Any = None
    payload_defaults: dict[str, Any] = Field(default_factory=dict)
    """Keys added to a JSON-object body the template rendered, where the template did not set
    them; rendered like the template (Dograh's top-level `call_disposition`)."""
    auth: Auth = Field(default_factory=NoAuth)
    signing: Signing = Field(default_factory=StandardSigning)
    timeout: float = Field(default=30.0, gt=0, le=300)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    success: SuccessRule = Field(default_factory=SuccessRule)
    response_mapping: dict[str, str] = Field(default_factory=dict)
    store_raw_response: bool = False
    ordered: bool = True
    allow_networks: list[Network] = Field(default_factory=list)

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return _template(value, "")

    @field_validator("payload_template", "payload_defaults")
    @classmethod
    def _check_payload(cls, value: Any) -> Any:
        return _template(value, "")

    @field_validator("response_mapping")
    @classmethod
    def _check_mapping(cls, value: dict[str, str]) -> dict[str, str]:
        for key, expression in value.items():
            if not _MAPPING_KEY.match(key):
                raise ValueError(f"response_mapping key {key!r} is not an identifier")
            _compile(expression)
        return value

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        networks = []
        for item in value:
            try:
                networks.append(ipaddress.ip_network(str(item), strict=True))
            except ValueError as error:
                raise ValueError(f"{item!r} is not a CIDR network: {error}") from None
        return networks

    def matches(self, event_type: str) -> bool:
        """Whether this subscription receives events of `event_type` (glob match)."""
        return self.enabled and any(fnmatch.fnmatchcase(event_type, glob) for glob in self.events)

    def templates(self) -> tuple[Any, ...]:
        """Every part of the configuration that may hold placeholders."""
        return (
            self.url,
            self.headers,
            self.payload_template,
            self.payload_defaults,
            self.auth.model_dump(),
            self.signing.model_dump(),
        )

    def secret_names(self) -> set[str]:
        """Every `secret.NAME` this subscription needs, so start-up can check they are set."""
        return set().union(*(secret_names(part) for part in self.templates()))

    def inputs(self) -> list[str]:
        """The context paths its templates read (`initial_context.tenant`, ...), secrets and
        header auth's own `_auth`/`_request`/`vars` left out: what a test send may fill in."""
        own = {"secret", "_auth", "_request", "vars"}
        paths = set().union(*(placeholder_paths(part) for part in self.templates()))
        return sorted(".".join(path) for path in paths if path[0] not in own)


class WebhooksConfig(_Model):
    """The `webhooks:` section of the gateway's configuration."""

    webhooks: list[Subscription] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> WebhooksConfig:
        seen: set[str] = set()
        for subscription in self.webhooks:
            if subscription.name in seen:
                raise ValueError(f"webhook name {subscription.name!r} is used twice")
            seen.add(subscription.name)
        return self


_UNION_TAGS: dict[str, frozenset[str]] = {
    "auth": frozenset(
        {
            "none",
            "api_key",
            "bearer_token",
            "basic_auth",
            "custom_header",
            "oauth2_client_credentials",
            "mtls",
            "header",
        }
    ),
    "signing": frozenset({"standard", "hmac_sha256_hex", "none"}),
}
"""Discriminator tags pydantic puts in error locations; dropped so paths read as written."""


def _location(loc: Iterable[Any]) -> str:
    text, previous = "", None
    for part in loc:
        if isinstance(previous, str) and previous in _UNION_TAGS and part in _UNION_TAGS[previous]:
            previous = None
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
        previous = part
    return text or "(top level)"


def describe_validation_error(error: ValidationError, prefix: str = "", rename: Mapping[str, str] | None = None) -> str:
    """A ValidationError as lines of `key.path: problem`, unknown keys called out by name.

    `rename` maps a top-level field to the key the user wrote (for imported formats)."""
    lines = []
    for item in error.errors(include_url=False):
        loc = list(item["loc"])
        if loc and rename and loc[0] in rename:
            loc[0] = rename[str(loc[0])]
        where = _location((*([prefix] if prefix else []), *loc))
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {message}")
    return "\n".join(lines)


def parse_subscriptions(data: Mapping[str, Any]) -> list[Subscription]:
    """Validate a mapping with a `webhooks:` list; raises `SubscriptionConfigError`."""
    try:
        return list(WebhooksConfig.model_validate(data).webhooks)
    except ValidationError as error:
        raise SubscriptionConfigError(describe_validation_error(error)) from None


def load_subscriptions(source: str | Path | Mapping[str, Any]) -> list[Subscription]:
    """Subscriptions from a YAML file path or an already-parsed mapping."""
    if isinstance(source, Mapping):
        return parse_subscriptions(source)
    try:
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SubscriptionConfigError(f"{source}: {error}") from None
    if not isinstance(data, Mapping):
        raise SubscriptionConfigError(f"{source}: expected a mapping with a 'webhooks' list")
    return parse_subscriptions(data)


def load_dograh_workflow(
    source: str | Path | Mapping[str, Any],
    credentials: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Subscription]:
    """Subscriptions to `call.ended` from a Dograh workflow's webhook nodes.

    See `gateway.webhooks.dograh` for the field mapping; `credentials` maps a node's
    `credential_uuid` to Dograh's `{credential_type, credential_data}`.
    """
    from gateway.webhooks.dograh import load_dograh_workflow as load

    return load(source, credentials)
