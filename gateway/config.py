"""The one configuration schema: YAML with `${VAR}` / `${VAR:-default}` from the environment.

Every key is optional. An unknown key, a wrong type or a missing secret stops start-up with
a message naming the key (`ConfigError`); `gateway check-config` prints the same message.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import GatewayError
from gateway.media.agent import AgentProtocol
from gateway.redact import header_secrets, url_secrets
from gateway.webhooks.deadlines import LEASE_MARGIN, shortest_lease
from gateway.webhooks.signing import decode_signing_secret
from gateway.webhooks.ssrf import configured_destination_problem
from gateway.webhooks.subscription import (
    RetryPolicy,
    Subscription,
    SubscriptionConfigError,
    describe_validation_error,
    load_dograh_workflow,
)

log = logging.getLogger("gateway.config")

DEFAULT_STORE = "sqlite:///data/gateway.db"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(GatewayError):
    """A configuration problem; the message names the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty (an empty secret would refuse every request it guards)")
    return value


Secret = Annotated[SecretStr, AfterValidator(_not_empty)]
"""A credential: set and not blank (an empty one passed validation and then failed every check)."""


class ListenConfig(_Model):
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    # providers' media sockets: picows (the lean layer, gateway/media/ws_edge.py) or uvicorn's ASGI WebSocket
    media_websocket: Literal["picows", "uvicorn"] = "picows"


class TwilioConfig(_Model):
    account_sid: str
    auth_token: Secret
    api_base_url: str | None = None  # REST API base; tests point it at a local stand-in


class VonageConfig(_Model):
    signature_secret: Secret
    application_id: str | None = None
    private_key: Secret | None = None  # a path or the PEM text
    api_key: str | None = None
    jwt_window: int = Field(300, ge=1, le=3600)  # seconds either side of `iat`
    api_base_url: str | None = None


class TelnyxConfig(_Model):
    """A Telnyx TeXML application: `public_key` checks webhooks; dialing needs the other three."""

    public_key: str  # Mission Control > Keys & Credentials > Public Key (base64 Ed25519)
    api_key: Secret | None = None  # REST API v2 key (Bearer)
    account_sid: str | None = None  # the TeXML REST path's account id
    application_id: str | None = None  # the TeXML application (its connection id)
    codec: Literal["PCMU", "PCMA"] = "PCMU"  # the media stream's codec, both ways
    timestamp_tolerance: int = Field(300, ge=1, le=3600)  # seconds either side of telnyx-timestamp
    api_base_url: str | None = None  # default https://api.telnyx.com; tests point it at a local stand-in

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        from gateway.providers.telnyx import PublicKeyError, load_public_key

        try:
            load_public_key(value)
        except PublicKeyError as exc:
            raise ValueError(f"not a Telnyx public key: {exc}") from None
        return value.strip()


class PlivoConfig(_Model):
    """A Plivo account (or subaccount): its Auth ID and Auth Token sign webhooks and the REST API."""

    auth_id: str
    auth_token: Secret
    api_base_url: str | None = None  # default https://api.plivo.com; tests point it at a local stand-in

    @field_validator("auth_id")
    @classmethod
    def _auth_id(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9]{8,64}", value):
            raise ValueError("must be the account's Auth ID (letters and digits, e.g. MAXXXXXXXXXXXXXXXXXX)")
        return value


class ProvidersConfig(_Model):
    twilio: TwilioConfig | None = None
    vonage: VonageConfig | None = None
    telnyx: TelnyxConfig | None = None
    plivo: PlivoConfig | None = None


class AgentAudioConfig(_Model):
    encoding: Literal["pcm16", "mulaw", "alaw"] = "pcm16"
    sample_rate: Literal[8000, 16000, 24000, 48000] = 16000


class AgentConfig(_Model):
    url: str = "echo"
    protocol: AgentProtocol = AgentProtocol.NATIVE  # twilio: the agent speaks Twilio Media Streams
    headers: dict[str, str] = Field(default_factory=dict)
    audio: AgentAudioConfig = AgentAudioConfig()
    on_failure: Literal["hangup", "keep"] = "hangup"
    connect_timeout: float = Field(5.0, gt=0, le=60)

    @model_validator(mode="before")
    @classmethod
    def _twilio_audio(cls, data: Any) -> Any:
        """Twilio Media Streams carry mu-law at 8 kHz, always: that is the agent's format."""
        if isinstance(data, dict) and data.get("protocol") == AgentProtocol.TWILIO.value:
            audio = data.get("audio")
            if audio is not None and (
                not isinstance(audio, dict)
                or (audio.get("encoding", "mulaw"), audio.get("sample_rate", 8000)) != ("mulaw", 8000)
            ):
                raise ValueError("audio must be mulaw at 8000 Hz with protocol twilio (or left unset)")
            data = {**data, "audio": {"encoding": "mulaw", "sample_rate": 8000}}
        return data

    @field_validator("url")
    @classmethod
    def _agent_url(cls, value: str) -> str:
        if value != "echo" and not value.startswith(("ws://", "wss://")):
            raise ValueError("must be 'echo' or a ws:// or wss:// URL")
        return value


class DeliveryConfig(_Model):
    """The webhook delivery engine."""

    concurrency: int = Field(8, ge=1, le=256)  # in-flight attempts per subscription
    prefetch: int = Field(4, ge=1, le=64)  # rows taken ahead per subscription: prefetch x concurrency
    lease_seconds: float = Field(0, ge=0)  # 0: the longest webhook timeout + 30 s; else at least that timeout + 10 s
    poll_seconds: float = Field(1.0, gt=0, le=60)
    disable_after_failures: int = Field(50, ge=1)  # consecutive failed attempts...
    disable_after_seconds: float = Field(3600, ge=0)  # ...spanning at least this long
    processes: int = Field(0, ge=0, le=16)  # processes that make the attempts; 0: the gateway process makes them


class LogConfig(_Model):
    format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, JSON otherwise
    level: Literal["debug", "info", "warning", "error"] = "info"


class LimitsConfig(_Model):
    """Limits that protect the process; each refusal is logged and counted in /metrics."""

    max_media_sessions: int = Field(1000, ge=1)  # live media sockets, those still presenting their token included
    provider_requests_per_second: float = Field(200.0, ge=0)  # refused provider requests per client IP; 0: no limit
    provider_burst: float = Field(400.0, ge=1)
    read_timeout_seconds: float = Field(15.0, gt=0, le=3600)  # a request's headers and body must arrive within this
    media_token_seconds: float = Field(5.0, gt=0, le=60)  # a media socket must present a valid stream token within this
    max_unverified_media_sockets: int = Field(100, ge=1)  # media sockets at once that have not yet done so


class MediaConfig(_Model):
    """The media path (docs/benchmarks.md, codec section, has the measurements behind the default)."""

    transcode_batching: bool = False  # transcode the frames of every call ready in one loop iteration together


class ShutdownConfig(_Model):
    drain_seconds: float = Field(300.0, ge=0)  # how long live calls may finish after SIGTERM


class TunnelConfig(_Model):
    """Where `public_url: auto` looks for a cloudflared quick tunnel's hostname."""

    metrics: list[str] = Field(default_factory=list)  # cloudflared metrics host:port; empty: 127.0.0.1:20241-20245
    log_file: str | None = None  # a file cloudflared's stderr goes to: the last place to look
    refresh_seconds: float = Field(15.0, gt=0, le=3600)  # re-check a found tunnel this often
    retry_seconds: float = Field(1.0, gt=0, le=3600)  # after a failed lookup; doubles up to refresh_seconds
    timeout: float = Field(2.0, gt=0, le=60)  # per request to a metrics server

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not re.match(r"^(http://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}/?$", address):
                raise ValueError(f"{address!r} is not a host:port (for example 127.0.0.1:20241 or cloudflared:20241)")
            if not 0 < int(address.rstrip("/").rsplit(":", 1)[1]) < 65536:
                raise ValueError(f"{address!r}: the port must be 1-65535")
        return value


class DialConfig(_Model):
    """Outbound calls and campaigns (`POST /api/v1/calls`, `/api/v1/campaigns`)."""

    default_provider: Literal["twilio", "vonage", "telnyx", "plivo"] | None = None  # when a request names none
    caller_id: dict[Literal["twilio", "vonage", "telnyx", "plivo"], str] = Field(
        default_factory=dict
    )  # default `from` per provider
    vonage_answer: Literal["url", "ncco"] = "url"  # fetch the answer webhook, or send the NCCO inline
    request_timeout: float = Field(15.0, gt=0, le=120)  # per provider REST request
    threads: int = Field(16, ge=1, le=256)  # provider REST requests at once
    poll_seconds: float = Field(0.5, gt=0, le=60)  # campaign runner tick
    orphan_seconds: float = Field(120.0, ge=0)  # a dial cut short by a restart waits this long for a callback
    reconcile_seconds: float = Field(600.0, ge=1)  # ask the provider about a call silent this long
    max_consecutive_refusals: int = Field(10, ge=1)  # a campaign fails after this many refused dials in a row
    webhook_secret: Secret | None = None  # signs campaigns' inline webhooks; unset: one per campaign
    webhook_timeout: float = Field(30.0, gt=0, le=300)
    webhook_retry: RetryPolicy = RetryPolicy()
    webhook_allow_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_signing_secret(value.get_secret_value())
        return value


class WorkflowSource(_Model):
    """A Dograh-style workflow definition whose webhook nodes become subscriptions."""

    path: str
    credentials: dict[str, dict[str, Any]] = Field(default_factory=dict)
    allow_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)


class GatewayConfig(_Model):
    """The whole configuration; field names are the public YAML keys."""

    public_url: str | None = None
    listen: ListenConfig = ListenConfig()
    store: str = DEFAULT_STORE
    data_dir: str = "data"
    api_key: Secret | None = None
    secret_key: Secret | None = None  # signs stream tokens and recording URLs
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.1/32")]
    )
    stream_token_ttl: int = Field(3600 * 4, ge=60)
    providers: ProvidersConfig = ProvidersConfig()
    agent: AgentConfig = AgentConfig()
    recording: bool | list[str] = False  # true: every call; a list: the calls of these workflow ids
    webhooks: list[Subscription] = Field(default_factory=list)
    workflows: list[WorkflowSource] = Field(default_factory=list)
    secrets: dict[str, Secret] = Field(default_factory=dict)  # {{secret.NAME}} values
    secrets_file: str | None = None  # a YAML/JSON mapping of more secrets
    delivery: DeliveryConfig = DeliveryConfig()
    tunnel: TunnelConfig = TunnelConfig()  # used when public_url is auto
    log: LogConfig = LogConfig()
    limits: LimitsConfig = LimitsConfig()
    media: MediaConfig = MediaConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    dial: DialConfig = DialConfig()
    workers: int | str = 1  # worker processes on the one port; auto: one per usable core (docs/scaling.md)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        from gateway.workers.count import check_workers

        return check_workers(value)

    @field_validator("workflows", mode="before")
    @classmethod
    def _workflow_paths(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _unique_webhook_names(self) -> GatewayConfig:
        seen: set[str] = set()
        for index, subscription in enumerate(self.webhooks):
            if subscription.name in seen:
                raise ValueError(f"webhooks[{index}].name: {subscription.name!r} is used twice")
            seen.add(subscription.name)
        return self

    def secret_values(self) -> dict[str, str]:
        """Every `{{secret.NAME}}` value: `secrets_file`, then `secrets`, then `GATEWAY_SECRET_NAME`."""
        values: dict[str, str] = {}
        if self.secrets_file:
            values.update(_read_secrets_file(self.secrets_file))
        values.update({name: value.get_secret_value() for name, value in self.secrets.items()})
        prefix = "GATEWAY_SECRET_"
        values.update({key[len(prefix) :]: value for key, value in os.environ.items() if key.startswith(prefix)})
        return values

    def secret_strings(self) -> list[str]:
        """Every secret value the process may hold, for the log redactor: provider credentials,
        `{{secret.NAME}}` values, signing secrets, `api_key` and `secret_key`, the credentials in
        the store and agent URLs and the agent's credential headers."""
        out: list[str] = []
        for provider in (self.providers.twilio, self.providers.vonage, self.providers.telnyx, self.providers.plivo):
            for name in ("auth_token", "signature_secret", "private_key", "api_key"):
                value = getattr(provider, name, None) if provider else None
                if isinstance(value, SecretStr):  # Vonage's api_key is an identifier, not a secret
                    out.append(value.get_secret_value())
        out += list(self.secret_values().values())
        out += [key for sub in self.webhooks for key in getattr(sub.signing, "secrets", [])]
        out += [v.get_secret_value() for v in (self.api_key, self.secret_key) if v is not None]
        out += url_secrets(self.store) + url_secrets(self.agent.url)  # a user:pass@ or ?token= in a URL
        out += header_secrets(self.agent.headers)
        return out

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if value == "auto":
            return value
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be 'auto' or an http(s):// base URL without query or fragment")
        return value.rstrip("/")

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value.startswith("sqlite:///"):
            from gateway.store import sqlite_options

            sqlite_options(value)  # raises ValueError naming a bad option
            return value
        if value.startswith(("postgresql://", "postgres://")):
            return value
        raise ValueError(
            "must be sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql://user:pass@host:port/db"
        )


def _read_secrets_file(path: str) -> dict[str, str]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"secrets_file: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"secrets_file: {path} is not valid YAML or JSON") from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, int, float)) for v in data.values()):
        raise ConfigError(f"secrets_file: {path} must be a mapping of names to text values")
    return {str(k): str(v) for k, v in data.items()}


def _interpolate(value: Any, path: str, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{path}: environment variable {name} is not set (use ${{{name}:-default}} to make it optional)"
        )

    return _ENV_REF.sub(substitute, value)


def parse_config(data: Any, env: dict[str, str] | None = None) -> GatewayConfig:
    """Validate already-loaded YAML data into a `GatewayConfig`, or raise `ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level): the configuration must be a mapping of keys")
    data = _interpolate(data, "", dict(os.environ) if env is None else env)
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc).replace("\n", "; ")) from None
    return _with_workflows(config)


def _with_workflows(config: GatewayConfig) -> GatewayConfig:
    """Append the subscriptions of Dograh workflow files, then check every secret is set."""
    subscriptions = list(config.webhooks)
    for index, source in enumerate(config.workflows):
        try:
            imported = load_dograh_workflow(source.path, source.credentials)
        except (SubscriptionConfigError, OSError, ValueError) as exc:
            raise ConfigError(f"workflows[{index}] ({source.path}): {exc}") from None
        if source.allow_networks:
            imported = [s.model_copy(update={"allow_networks": list(source.allow_networks)}) for s in imported]
        subscriptions += imported
    names = [s.name for s in subscriptions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"webhooks: subscription name {duplicates[0]!r} is used twice (workflows included)")
    config = config.model_copy(update={"webhooks": subscriptions})
    lease = config.delivery.lease_seconds
    if lease and lease < (shortest := shortest_lease(s.timeout for s in subscriptions)):
        slowest = max(subscriptions, key=lambda s: s.timeout)
        raise ConfigError(
            f"delivery.lease_seconds: {lease:g} is shorter than the longest webhook timeout ({slowest.name}: "
            f"{slowest.timeout:g} s) + {LEASE_MARGIN:g} s; an attempt could outlive its lease and the delivery be "
            f"sent twice (use at least {shortest:g}, or 0 for the timeout + 30 s)"
        )
    available = config.secret_values()
    for index, subscription in enumerate(subscriptions):
        refused = configured_destination_problem(subscription.url, subscription.allow_networks)
        if refused:
            raise ConfigError(f"webhooks[{index}] ({subscription.name}).url: {refused}")
        for name in sorted(subscription.secret_names()):
            if name not in available:
                raise ConfigError(
                    f"webhooks[{index}] ({subscription.name}): secret {name!r} is not set "
                    f"(add it under secrets:, to secrets_file, or as GATEWAY_SECRET_{name})"
                )
            if not available[name].strip():
                raise ConfigError(
                    f"webhooks[{index}] ({subscription.name}): secret {name!r} is empty "
                    "(an empty secret would fail every delivery it signs or authenticates)"
                )
    return config


def load_config(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> GatewayConfig:
    """Read the config file (`path`, else `$GATEWAY_CONFIG`, else none at all: defaults)."""
    environ = dict(os.environ) if env is None else env
    path = config_file(path, environ)
    if path is None:
        return parse_config({}, environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_config(data, environ)


def config_file(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> str | None:
    """The config file `load_config` reads: `path`, else `$GATEWAY_CONFIG`, else None (none at all)."""
    environ = os.environ if env is None else env
    found = path or environ.get("GATEWAY_CONFIG") or None
    return None if found is None else str(found)


_DEV_NAMES = frozenset({"DEV_SECRETS_FILE", "DevSecrets", "dev_secrets_path", "with_dev_secrets", "apply_dev_secrets"})


def __getattr__(name: str) -> Any:
    """The development secrets live in `gateway.dev_secrets`; importing them from here still works."""
    if name in _DEV_NAMES:
        from gateway import dev_secrets

        return getattr(dev_secrets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
