"""Import the webhook nodes of a Dograh workflow definition as subscriptions.

A Dograh workflow runs its `type: "webhook"` nodes once the run is over, so each becomes a
subscription to `call.ended` with the same meaning:

| node `data`                  | subscription                                                 |
|------------------------------|--------------------------------------------------------------|
| `name` ("Notify CRM")        | `name` "notify-crm" (made unique with -2, -3...)             |
| `enabled` (default true)     | `enabled`                                                    |
| `http_method` (default POST) | `method`                                                     |
| `endpoint_url`               | `url`                                                        |
| `payload_template`           | `payload_template` (absent: `{}`); the gateway's templates   |
|                              | read Dograh's `{{path}}` and `{{path | default('x')}}`       |
| `custom_headers`             | `headers` (a list of `{key, value}`, or a mapping)           |
| `credential_uuid`            | `auth`, from the `credentials` mapping given to the loader,  |
| (or an inline `credential`)  | `{credential_type, credential_data}` as Dograh stores them:  |
|                              | none; api_key {header_name, api_key}; bearer_token {token};  |
|                              | basic_auth {username, password};                             |
|                              | custom_header {header_name, header_value}                    |
| `retry_config`               | absent or `enabled: false`: one attempt, no retries (Dograh  |
|                              | does not retry by default); else `max_retries` retries       |
|                              | `retry_delay_seconds` apart (defaults 3 and 5), no jitter    |

Dograh does not sign its webhooks, so imported subscriptions use `signing: none`; success is any
2xx and the timeout 30 s, as Dograh documents. Like Dograh, every delivered JSON-object payload
carries a top-level `call_disposition`, taken from `gathered_context.call_disposition` when the
template does not set one (`payload_defaults`).

What Dograh exports today is imported as it is: nodes of other types are skipped whatever their
keys; Dograh's bookkeeping keys (`is_start`, `is_end`, on every node's data) are ignored; any
other key the importer does not know in a webhook node's data is logged as a warning naming it
(a newer Dograh may add fields) and otherwise ignored. A known key with a wrong value is an error.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.webhooks.subscription import (
    Subscription,
    SubscriptionConfigError,
    describe_validation_error,
)

NODE_KEYS = frozenset(
    {
        "name",
        "enabled",
        "http_method",
        "endpoint_url",
        "payload_template",
        "custom_headers",
        "credential_uuid",
        "credential",
        "retry_config",
    }
)
BOOKKEEPING_KEYS = frozenset({"is_start", "is_end"})
"""Keys Dograh writes in every node's data (`BaseNodeData`) that mean nothing to a webhook."""
PAYLOAD_DEFAULTS = {"call_disposition": "{{gathered_context.call_disposition | default('')}}"}
RETRY_KEYS = frozenset({"enabled", "max_retries", "retry_delay_seconds"})
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_DELAY = 5.0
_DATA_KEYS = {
    "name": "data.name",
    "enabled": "data.enabled",
    "method": "data.http_method",
    "url": "data.endpoint_url",
    "headers": "data.custom_headers",
    "payload_template": "data.payload_template",
    "auth": "credential",
    "retry": "data.retry_config",
}


log = logging.getLogger("gateway.config")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.strip().lower()).strip("-")[:60]


def _headers(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, list):
        headers = {}
        for index, item in enumerate(raw):
            if not isinstance(item, Mapping) or "key" not in item or "value" not in item:
                raise SubscriptionConfigError(f"{where}.custom_headers[{index}]: needs 'key' and 'value'")
            if str(item["key"]).strip():
                headers[str(item["key"]).strip()] = str(item["value"])
        return headers
    raise SubscriptionConfigError(f"{where}.custom_headers: expected a list of {{key, value}}")


def _auth(credential: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = str(credential.get("credential_type", "none")).lower()
    data = credential.get("credential_data") or {}

    def field(name: str) -> str:
        if name not in data:
            raise SubscriptionConfigError(f"{where}: {kind} credential lacks {name!r}")
        return str(data[name])

    if kind == "none":
        return {"type": "none"}
    if kind == "api_key":
        header = str(data.get("header_name") or "X-API-Key")
        return {"type": "api_key", "header": header, "value": field("api_key")}
    if kind == "bearer_token":
        return {"type": "bearer_token", "token": field("token")}
    if kind == "basic_auth":
        return {"type": "basic_auth", "username": field("username"), "password": field("password")}
    if kind == "custom_header":
        return {
            "type": "custom_header",
            "name": field("header_name"),
            "value": field("header_value"),
        }
    raise SubscriptionConfigError(f"{where}: unknown credential_type {kind!r}")


def _retry(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {"schedule": [], "jitter": 0}
    if not isinstance(raw, Mapping):
        raise SubscriptionConfigError(f"{where}.retry_config: expected an object")
    unknown = sorted(set(raw) - RETRY_KEYS)
    if unknown:
        raise SubscriptionConfigError(f"{where}.retry_config.{unknown[0]}: unknown key")
    if not raw.get("enabled", False):
        return {"schedule": [], "jitter": 0}
    try:
        retries = int(raw.get("max_retries", DEFAULT_MAX_RETRIES))
        delay = float(raw.get("retry_delay_seconds", DEFAULT_RETRY_DELAY))
    except (TypeError, ValueError):
        raise SubscriptionConfigError(
            f"{where}.retry_config: max_retries and retry_delay_seconds are numbers"
        ) from None
    return {"schedule": [delay] * max(0, retries), "jitter": 0}


def _nodes(definition: Mapping[str, Any]) -> list[Any]:
    if isinstance(definition.get("workflow_definition"), Mapping):
        definition = definition["workflow_definition"]
    nodes = definition.get("nodes")
    if not isinstance(nodes, list):
        raise SubscriptionConfigError("workflow definition has no 'nodes' list")
    return nodes


def load_dograh_workflow(
    source: str | Path | Mapping[str, Any],
    credentials: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Subscription]:
    """Subscriptions for the webhook nodes of a Dograh workflow (a JSON file path or a dict).

    `credentials` maps a `credential_uuid` to `{credential_type, credential_data}`.
    Raises `SubscriptionConfigError` naming the node and key on anything it cannot map.
    """
    if isinstance(source, Mapping):
        definition: Any = source
    else:
        try:
            definition = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SubscriptionConfigError(f"{source}: {error}") from None
    if not isinstance(definition, Mapping):
        raise SubscriptionConfigError("workflow definition is not a JSON object")
    subscriptions: list[Subscription] = []
    used: set[str] = set()
    for index, node in enumerate(_nodes(definition)):
        if not isinstance(node, Mapping) or node.get("type") != "webhook":
            continue
        where = f"nodes[{index}] ({node.get('id', 'no id')})"
        data = node.get("data") or {}
        unknown = sorted(set(data) - NODE_KEYS - BOOKKEEPING_KEYS)
        if unknown:
            log.warning(
                "Dograh workflow %s.data: ignored key%s %s (not a webhook setting this gateway knows)",
                where,
                "s" if len(unknown) > 1 else "",
                ", ".join(repr(key) for key in unknown),
            )
        base = _slug(str(data.get("name") or "")) or _slug(str(node.get("id") or "")) or "webhook"
        name, counter = base, 1
        while name in used:
            counter += 1
            name = f"{base}-{counter}"
        used.add(name)
        if "credential" in data:
            auth = _auth(data["credential"], f"{where}.data.credential")
        elif data.get("credential_uuid"):
            uuid = str(data["credential_uuid"])
            if credentials is None or uuid not in credentials:
                raise SubscriptionConfigError(f"{where}.data.credential_uuid: credential {uuid!r} was not supplied")
            auth = _auth(credentials[uuid], f"{where}.data.credential_uuid")
        else:
            auth = {"type": "none"}
        fields = {
            "name": name,
            "enabled": bool(data.get("enabled", True)),
            "events": ["call.ended"],
            "method": data.get("http_method") or "POST",
            "url": data.get("endpoint_url") or "",
            "headers": _headers(data.get("custom_headers"), f"{where}.data"),
            "payload_template": data.get("payload_template") or {},
            "payload_defaults": PAYLOAD_DEFAULTS,
            "auth": auth,
            "signing": {"scheme": "none"},
            "retry": _retry(data.get("retry_config"), f"{where}.data"),
        }
        try:
            subscriptions.append(Subscription.model_validate(fields))
        except ValidationError as error:
            raise SubscriptionConfigError(describe_validation_error(error, prefix=where, rename=_DATA_KEYS)) from None
    return subscriptions
