"""Development secrets: what `gateway serve` generates when the configuration leaves keys unset.

`<data_dir>/dev-secrets.json` (mode 0600) holds the admin `api_key` and the `secret_key`, and, for
running with no configuration file at all, test credentials for both providers so that
`gateway simulate` and the gateway agree. Never used for what a configuration file sets; the
provider credentials are never used when a configuration file exists.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

from gateway.config import (
    ConfigError,
    GatewayConfig,
    PlivoConfig,
    ProvidersConfig,
    TelnyxConfig,
    TwilioConfig,
    VonageConfig,
)

log = logging.getLogger("gateway.config")

DEV_SECRETS_FILE = "dev-secrets.json"
DEV_TWILIO_ACCOUNT_SID = "AC" + "de7" * 10 + "00"  # 34 characters, like a real one; no real account
DEV_VONAGE_APPLICATION_ID = "00000000-0000-4000-8000-00000000de7e"
DEV_PLIVO_AUTH_ID = "MADE7DE7DE7DE7DE7DE7"  # 20 characters, like a real Auth ID; no real account


def telnyx_public_key(private_key: str) -> str:
    """The base64 Ed25519 public key of a base64 32-byte private key (Telnyx's Public Key form)."""
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_key, validate=True))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def _generate(key: str) -> str:
    if key == "telnyx_private_key":  # an Ed25519 seed: the simulator signs, the gateway checks its public half
        return base64.b64encode(os.urandom(32)).decode("ascii")
    return secrets.token_urlsafe(32)


def dev_secrets_path(config: GatewayConfig) -> Path:
    """Where the generated development secrets live: `<data_dir>/dev-secrets.json`."""
    return Path(config.data_dir) / DEV_SECRETS_FILE


class DevSecrets:
    """The development secrets file, generated once: keys the gateway needs, and (for running
    with no config file at all) test credentials for both providers so `gateway simulate` and
    the gateway agree. Development only: a config file's values always win, and with a config
    file the provider credentials here are never used."""

    KEYS = (
        "api_key",
        "secret_key",
        "twilio_auth_token",
        "vonage_signature_secret",
        "plivo_auth_token",
        "telnyx_private_key",
    )

    def __init__(self, path: Path, values: dict[str, str]) -> None:
        self.path = path
        self.values = values

    @classmethod
    def read(cls, path: Path) -> DevSecrets | None:
        """The stored secrets, or None when the file does not exist."""
        if not path.exists():
            return None
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            values = None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: unreadable development secrets; delete the file to regenerate it")
        return cls(path, {str(k): str(v) for k, v in values.items()})

    @classmethod
    def ensure(cls, path: Path) -> DevSecrets:
        """The stored secrets with every missing one generated and written (mode 0600)."""
        found = cls.read(path) or cls(path, {})
        missing = [key for key in cls.KEYS if not found.values.get(key)]
        if missing:
            for key in missing:
                found.values[key] = _generate(key)
            found.values["_note"] = "generated for development by gateway serve; never use these in production"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(found.values, handle, indent=2)
        return found

    def providers(self) -> ProvidersConfig:
        """Test credentials for every provider (for `gateway simulate`; no real account). Telnyx
        signs with a private key: the gateway gets its public half, the simulator the key."""
        return ProvidersConfig(
            twilio=TwilioConfig(
                account_sid=DEV_TWILIO_ACCOUNT_SID, auth_token=SecretStr(self.values["twilio_auth_token"])
            ),
            vonage=VonageConfig(
                signature_secret=SecretStr(self.values["vonage_signature_secret"]),
                application_id=DEV_VONAGE_APPLICATION_ID,
            ),
            telnyx=TelnyxConfig(public_key=telnyx_public_key(self.values["telnyx_private_key"]))
            if self.values.get("telnyx_private_key")
            else None,  # a file written before these existed has none
            plivo=PlivoConfig(auth_id=DEV_PLIVO_AUTH_ID, auth_token=SecretStr(self.values["plivo_auth_token"]))
            if self.values.get("plivo_auth_token")
            else None,
        )


def needs_dev_secrets(config: GatewayConfig, *, from_file: bool) -> bool:
    """Whether `with_dev_secrets` has anything to fill."""
    return config.api_key is None or config.secret_key is None or not from_file


def apply_dev_secrets(config: GatewayConfig, stored: DevSecrets, *, from_file: bool) -> GatewayConfig:
    """`config` with its unset `api_key`/`secret_key` (and, with no config file, its providers)
    taken from `stored`. Pure: the caller reads or generates the file."""
    update: dict[str, Any] = {
        k: SecretStr(stored.values[k])
        for k in ("api_key", "secret_key")
        if getattr(config, k) is None and stored.values.get(k)
    }
    if not from_file and config.providers == ProvidersConfig():
        update["providers"] = stored.providers()
    return config.model_copy(update=update)


def with_dev_secrets(
    config: GatewayConfig, *, from_file: bool = True, create: bool = True, warn: bool = True
) -> GatewayConfig:
    """Fill what a development gateway needs from `<data_dir>/dev-secrets.json`, generating it once.

    `api_key`/`secret_key` when the configuration leaves them unset; with no config file at all
    (`from_file=False`), test credentials for both providers too. `create=False` (the simulator,
    the admin tools) only reads the file and raises `ConfigError` when it is not there.
    A deployment sets both keys itself and has a config file, and then nothing is read.
    """
    if not needs_dev_secrets(config, from_file=from_file):
        return config
    path = dev_secrets_path(config)
    if create:
        stored = DevSecrets.ensure(path)
    else:
        found = DevSecrets.read(path)
        if found is None:
            raise ConfigError(
                f"no development secrets at {path}: start the gateway (make run) from this directory "
                "first, or pass the gateway's --config"
            )
        stored = found
    filled = apply_dev_secrets(config, stored, from_file=from_file)
    if warn:
        missing = [k for k in ("api_key", "secret_key") if getattr(config, k) is None]
        if missing:
            log.warning(
                "*** DEVELOPMENT SECRETS *** %s not configured; using generated values from %s. "
                "Set them in the config before exposing this gateway.",
                " and ".join(missing),
                path,
            )
        if filled.providers is not config.providers:
            log.warning(
                "*** DEVELOPMENT PROVIDERS *** no config file: Twilio, Vonage, Telnyx and Plivo accept only requests "
                "signed with the test credentials in %s (for gateway simulate); real providers need a config file",
                path,
            )
    return filled
