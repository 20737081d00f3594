"""Telnyx's TeXML REST API for dialing and hanging up (the requests the telnyx SDK sends).
Blocking: run these methods in a thread executor.

`POST /v2/texml/Accounts/{account_sid}/Calls` with the TeXML application, the gateway's own
answer URL as `Url`, its status-callback URL for every `StatusCallbackEvent`, and asynchronous
answering-machine detection posting `AnsweredBy` to the same status URL; `POST .../Calls/{sid}`
with `Status=completed` ends a call; `GET .../Calls/{sid}` reads its status, end and duration. Authenticated
with `Authorization: Bearer <API key>`. `api_base_url` replaces `https://api.telnyx.com`.
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

NAME = "telnyx"
DEFAULT_API_BASE = "https://api.telnyx.com"
STATUS_EVENTS = "initiated ringing answered completed"
_AMD = {"detect": "Enable", "message_end": "DetectMessageEnd"}


def create_call_body(application_id: str, spec: DialSpec) -> dict[str, Any]:
    """The JSON body of the TeXML create-call request for `spec`. Pure."""
    body: dict[str, Any] = {
        "ApplicationSid": application_id,
        "To": spec.to,
        "From": spec.from_,
        "Url": spec.answer_url,
        "UrlMethod": "POST",
        "StatusCallback": spec.status_url,
        "StatusCallbackEvent": STATUS_EVENTS,
        "StatusCallbackMethod": "POST",
    }
    if spec.machine_detection:
        body["MachineDetection"] = _AMD[spec.machine_detection]
        body["AsyncAmd"] = True
        body["AsyncAmdStatusCallback"] = spec.status_url
        body["AsyncAmdStatusCallbackMethod"] = "POST"
    if spec.ring_timeout:
        body["Timeout"] = max(1, min(int(spec.ring_timeout), 600))
    return body


def refusal_of(status: int, body: Any, text: str) -> ProviderRefused:
    """A Telnyx error answer (`{"errors": [{"code", "title", "detail"}]}`) as a `ProviderRefused`."""
    reason, code = None, None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        reason = first.get("detail") or first.get("title")
        code = first.get("code")
    return ProviderRefused(
        NAME,
        short_text(reason or text or f"HTTP {status}"),
        status=status,
        code=short_text(code, 120) if code is not None else None,
    )


class TelnyxRest:
    """One account's TeXML REST client; one `requests.Session` per client, no automatic retries
    (a re-sent create could place the call twice)."""

    name = NAME

    def __init__(
        self,
        api_key: str,
        account_sid: str,
        application_id: str,
        *,
        api_base_url: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.account_sid = account_sid
        self.application_id = application_id
        self.base = (api_base_url or DEFAULT_API_BASE).rstrip("/") + "/v2/texml/Accounts/" + quote(account_sid, safe="")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {api_key}", "Accept": "application/json"})

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self.session.request(method, self.base + path, json=body, timeout=self.timeout)
        except (requests.RequestException, OSError) as error:
            raise ProviderRefused(
                NAME,
                short_text(f"no answer from the Telnyx API: {type(error).__name__}: {error}"),
                maybe_sent=maybe_sent(error),
            ) from None
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = None
        if response.status_code >= 300:
            raise refusal_of(response.status_code, data, response.text)
        if not isinstance(data, dict):
            raise ProviderRefused(NAME, "the answer was not a JSON object", status=response.status_code)
        return data

    def create_call(self, spec: DialSpec) -> DialResult:
        """Place the call. The answer may carry no call sid (the SDK's model has only from, to
        and status): then the first callback brings it."""
        data = self._request("POST", "/Calls", create_call_body(self.application_id, spec))
        inner = data.get("data")
        if isinstance(inner, dict):
            data = inner
        call_id = data.get("call_sid") or data.get("sid")
        return DialResult(
            provider_call_id=call_id if isinstance(call_id, str) and call_id else None,
            status=data.get("status"),
            raw={k: data.get(k) for k in ("call_sid", "status") if k in data},
        )

    def hangup(self, call_id: str, *, answered: bool) -> str | None:
        """`Status=completed` ends the call, answered or not. Returns Telnyx's status after it."""
        data = self._request("POST", "/Calls/" + quote(call_id, safe=""), {"Status": "completed"})
        return data.get("status")

    def fetch_call(self, call_id: str) -> ProviderCall:
        """The TeXML call resource: `status`, and `end_time` and `duration` (s) once it ended."""
        data = self._request("GET", "/Calls/" + quote(call_id, safe=""))
        status = data.get("status")
        return ProviderCall(
            status=status if isinstance(status, str) else None,
            ended_at=provider_time(data.get("end_time")),
            duration=provider_seconds(data.get("duration")),
        )
