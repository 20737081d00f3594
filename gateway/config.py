"""The one configuration schema: YAML with `${VAR}` / `${VAR:-default}` from the environment.

Every key is optional. An unknown key, a wrong type or a missing secret stops start-up with
a message naming the key (`ConfigError`); `gateway check-config` prints the same message.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

log = logging.getLogger("gateway.config")

DEFAULT_STORE = "sqlite:///data/gateway.db"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration problem; the message names the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Model):
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)


class TwilioConfig(_Model):
    account_sid: str
    auth_token: SecretStr
    api_base_url: str | None = None  # REST API base; tests point it at a local stand-in


class VonageConfig(_Model):
    signature_secret: SecretStr
    application_id: str | None = None
    private_key: SecretStr | None = None  # a path or the PEM text
    api_key: str | None = None
    jwt_window: int = Field(300, ge=1, le=3600)  # seconds either side of `iat`
    api_base_url: str | None = None


class ProvidersConfig(_Model):
    twilio: TwilioConfig | None = None
    vonage: VonageConfig | None = None


class AgentAudioConfig(_Model):
    encoding: Literal["pcm16", "mulaw", "alaw"] = "pcm16"
    sample_rate: Literal[8000, 16000, 24000, 48000] = 16000


class AgentConfig(_Model):
    url: str = "echo"
    headers: dict[str, str] = Field(default_factory=dict)
    audio: AgentAudioConfig = AgentAudioConfig()
    on_failure: Literal["hangup", "keep"] = "hangup"
    connect_timeout: float = Field(5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _agent_url(cls, value: str) -> str:
        if value != "echo" and not value.startswith(("ws://", "wss://")):
            raise ValueError("must be 'echo' or a ws:// or wss:// URL")
        return value


class GatewayConfig(_Model):
    """The whole configuration; field names are the public YAML keys."""

    public_url: str | None = None
    listen: ListenConfig = ListenConfig()
    store: str = DEFAULT_STORE
    data_dir: str = "data"
    api_key: SecretStr | None = None
    secret_key: SecretStr | None = None  # signs stream tokens and recording URLs
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.1/32")]
    )
    stream_token_ttl: int = Field(3600 * 4, ge=60)
    providers: ProvidersConfig = ProvidersConfig()
    agent: AgentConfig = AgentConfig()
    recording: bool = False
    webhooks: list[dict[str, Any]] = Field(default_factory=list)

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
            return value
        if value.startswith(("postgresql://", "postgres://")):
            raise ValueError("PostgreSQL is not supported by this version yet; use sqlite:///path")
        raise ValueError("must be sqlite:///relative/path.db or sqlite:////absolute/path.db")

    def sqlite_path(self) -> str:
        """Filesystem path of the SQLite database named by `store`."""
        return self.store[len("sqlite:///"):]


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
        raise ConfigError(f"{path}: environment variable {name} is not set (use ${{{name}:-default}} to make it optional)")

    return _ENV_REF.sub(substitute, value)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def parse_config(data: Any, env: dict[str, str] | None = None) -> GatewayConfig:
    """Validate already-loaded YAML data into a `GatewayConfig`, or raise `ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level): the configuration must be a mapping of keys")
    data = _interpolate(data, "", dict(os.environ) if env is None else env)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> GatewayConfig:
    """Read the config file (`path`, else `$GATEWAY_CONFIG`, else none at all: defaults)."""
    environ = dict(os.environ) if env is None else env
    path = path or environ.get("GATEWAY_CONFIG") or None
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


def with_dev_secrets(config: GatewayConfig) -> GatewayConfig:
    """Fill `api_key`/`secret_key` from `<data_dir>/dev-secrets.json`, generating it once.

    For trying the gateway with no configuration; a deployment sets both keys itself.
    """
    if config.api_key is not None and config.secret_key is not None:
        return config
    path = Path(config.data_dir) / "dev-secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(f"{path}: unreadable development secrets; delete the file to regenerate it") from None
    changed = False
    for key in ("api_key", "secret_key"):
        if not stored.get(key):
            stored[key] = secrets.token_urlsafe(32)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(stored, handle, indent=2)
    missing = [k for k in ("api_key", "secret_key") if getattr(config, k) is None]
    log.warning(
        "*** DEVELOPMENT SECRETS *** %s not configured; using generated values from %s. "
        "Set them in the config before exposing this gateway.",
        " and ".join(missing), path,
    )
    update = {k: SecretStr(stored[k]) for k in missing}
    return config.model_copy(update=update)
