"""Plivo's Voice REST API for dialing and hanging up (the requests the plivo SDK sends).
Blocking: run these methods in a thread executor.

`POST /v1/Account/{auth_id}/Call/` (JSON, HTTP Basic auth) with the gateway's answer URL as
`answer_url` and its status-callback URL as `ring_url`, `hangup_url` and, with machine
detection, `machine_detection_url`; `DELETE .../Call/{CallUUID}/` ends a call (204; 404 when
it has already ended); `GET .../Call/{CallUUID}/?status=live` reads a live call's status, `GET .../Call/{CallUUID}/` an
ended call's record.
`api_base_url` replaces `https://api.plivo.com`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from gateway.providers.base import provider_time
from gateway.providers.rest import (
    DialResult,
    DialSpec,
    ProviderCall,
    ProviderRefused,
    maybe_sent,
    provider_seconds,
    short_text,
)

NAME = "plivo"
DEFAULT_API_BASE = "https://api.plivo.com"
ENDED = "completed"  # what `hangup` and `fetch_call` say of a call Plivo no longer has live


def plivo_number(number: str) -> str:
    """Plivo's numbers are digits with the country code, no `+`."""
    return number.strip().removeprefix("+")


def create_call_body(spec: DialSpec) -> dict[str, Any]:
    """The JSON body of the create-call request for `spec`, with the SDK's own defaults. Pure."""
    body: dict[str, Any] = {
        "from": plivo_number(spec.from_),
        "to": plivo_number(spec.to),
        "answer_url": spec.answer_url,
        "answer_method": "POST",
        "ring_url": spec.status_url,
        "ring_method": "POST",
        "hangup_url": spec.status_url,
        "hangup_method": "POST",
        "fallback_method": "POST",
        "machine_detection_time": 5000,
        "machine_detection_method": "POST",
        "ring_timeout": max(1, int(spec.ring_timeout)) if spec.ring_timeout else 120,
        "error_if_parent_not_found": False,
    }
    if spec.machine_detection:  # Plivo has one mode: report human or machine (`Machine`)
        body["machine_detection"] = "true"
        body["machine_detection_url"] = spec.status_url
    return body


def refusal_of(status: int, body: Any, text: str) -> ProviderRefused:
    """A Plivo error answer (`{"api_id": ..., "error": ...}`) as a `ProviderRefused`."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = "; ".join(f"{k}: {v}" for k, v in error.items())
    return ProviderRefused(NAME, short_text(error or text or f"HTTP {status}"), status=status)


class PlivoRest:
    """One account's REST client; no automatic retries (a re-sent create could place the call twice)."""

    name = NAME

    def __init__(
        self, auth_id: str, auth_token: str, *, api_base_url: str | None = None, timeout: float = 15.0
    ) -> None:
        self.base = f"{(api_base_url or DEFAULT_API_BASE).rstrip('/')}/v1/Account/{quote(auth_id, safe='')}"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.auth = (auth_id, auth_token)
        self.session.headers.update({"Content-Type": "application/json", "Accept": "application/json"})

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        try:
            response = self.session.request(method, self.base + path, json=body, params=params, timeout=self.timeout)
        except (requests.RequestException, OSError) as error:
            raise ProviderRefused(
                NAME,
                short_text(f"no answer from the Plivo API: {type(error).__name__}: {error}"),
                maybe_sent=maybe_sent(error),
            ) from None
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = None
        if response.status_code >= 300 and response.status_code != 404:
            raise refusal_of(response.status_code, data, response.text)
        return response.status_code, data if isinstance(data, dict) else {}

    def create_call(self, spec: DialSpec) -> DialResult:
        """Place the call. Plivo answers with a request uuid; the call's `CallUUID` comes with
        its first callback."""
        status, data = self._request("POST", "/Call/", create_call_body(spec))
        if status == 404:
            raise refusal_of(status, data, "not found")
        return DialResult(
            provider_call_id=None,
            status="queued",
            raw={k: data[k] for k in ("request_uuid", "message", "api_id") if k in data},
        )

    def hangup(self, call_id: str, *, answered: bool) -> str | None:
        """End the call; a call Plivo no longer has (404) has already ended."""
        status, _ = self._request("DELETE", f"/Call/{quote(call_id, safe='')}/")
        return ENDED if status == 404 else None

    def fetch_call(self, call_id: str) -> ProviderCall:
        """A live call's `call_status`; once it is no longer live, its record (`end_time`,
        `call_duration`) as `completed` (Plivo keeps records of ended calls only)."""
        path = f"/Call/{quote(call_id, safe='')}/"
        status, data = self._request("GET", path, params={"status": "live"})
        if status != 404:
            value = data.get("call_status")
            return ProviderCall(status=value if isinstance(value, str) else None)
        status, data = self._request("GET", path)
        if status == 404:
            return ProviderCall(status=ENDED)
        return ProviderCall(
            status=ENDED,
            ended_at=provider_time(data.get("end_time")),
            duration=provider_seconds(data.get("call_duration")),
        )
