"""The gateway's own provider-facing URLs for an outbound call, built from the public origin.

The paths are the documented contract served by `gateway.api.telephony` (kept identical there).
"""

from __future__ import annotations

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
