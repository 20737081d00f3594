"""The gateway's own provider-facing URLs for an outbound call, built from the public origin.

The paths are the documented contract served by `gateway.api.telephony` (kept identical there).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

ANSWER_PATH = "/api/v1/telephony/webhook/{workflow_id}/{user_id}/{workflow_run_id}"
STATUS_PATH = "/api/v1/telephony/status-callback/{workflow_run_id}"
WS_PATH = "/api/v1/telephony/ws/{workflow_id}/{user_id}/{workflow_run_id}"

_SAFE = ":@-._~"


def _path(template: str, **ids: str) -> str:
    return template.format(**{name: quote(value, safe=_SAFE) for name, value in ids.items()})


def answer_url(origin: str, workflow_id: str, user_id: str, run_id: str) -> str:
    """The initial call webhook the provider fetches when the callee answers."""
    return origin.rstrip("/") + _path(ANSWER_PATH, workflow_id=workflow_id, user_id=user_id, workflow_run_id=run_id)


def status_url(origin: str, run_id: str) -> str:
    """The status callback the provider posts lifecycle events to."""
    return origin.rstrip("/") + _path(STATUS_PATH, workflow_run_id=run_id)


def websocket_url(origin: str, workflow_id: str, user_id: str, run_id: str) -> str:
    """The media WebSocket (`wss://` for an `https://` origin)."""
    scheme, rest = origin.rstrip("/").split("://", 1)
    ws_scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    return f"{ws_scheme}://{rest}" + _path(WS_PATH, workflow_id=workflow_id, user_id=user_id, workflow_run_id=run_id)


INBOUND_PATH = "/api/v1/telephony/inbound/{workflow_id}/{user_id}"


def console_urls(origin: str) -> list[tuple[str, str]]:
    """(where in the provider's console, the URL to paste) for a number's calls on `origin`;
    WORKFLOW and USER are left for the operator to fill in."""
    inbound = origin.rstrip("/") + INBOUND_PATH.format(workflow_id="WORKFLOW", user_id="USER")
    return [
        ("Twilio number, Voice: 'A call comes in' (Webhook, HTTP POST)", inbound),
        ("Twilio number, Voice: 'Call status changes'", status_url(origin, "twilio")),
        ("Vonage application, Voice: Answer URL", inbound),
        ("Vonage application, Voice: Event URL (HTTP POST)", status_url(origin, "vonage")),
    ]


def log_console_urls(log: Any, origin: str) -> None:
    """Log the URLs to paste into the providers' consoles, one line each."""
    for where, url in console_urls(origin):
        log.info("paste into the %s: %s", where, url)
