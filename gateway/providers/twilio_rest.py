"""Twilio's REST API for dialing and hanging up, through the `twilio` package. Blocking: run
these methods in a thread executor.

`calls.create` gets the gateway's own initial-webhook URL as `url`, the status-callback URL
with all four `status_callback_event`s, and asynchronous answering-machine detection whose
result (`AnsweredBy`) is posted to the same status-callback URL. `api_base_url` replaces
`https://api.twilio.com` (a regional edge, or a local stand-in in tests).
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

import requests
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from gateway.providers.rest import (
    DialResult,
    DialSpec,
    ProviderCall,
    ProviderRefused,
    maybe_sent,
    provider_seconds,
    short_text,
)

NAME = "twilio"
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
_AMD = {"detect": "Enable", "message_end": "DetectMessageEnd"}
_SDK_PREFIX = re.compile(r"^Unable to (create|update|fetch|delete) record: ")
_ENDED = frozenset({"completed", "canceled", "busy", "no-answer", "failed"})


def create_call_params(spec: DialSpec) -> dict[str, Any]:
    """The keyword arguments of `client.calls.create` for `spec`. Pure."""
    params: dict[str, Any] = {
        "to": spec.to,
        "from_": spec.from_,
        "url": spec.answer_url,
        "method": "POST",
        "status_callback": spec.status_url,
        "status_callback_event": list(STATUS_EVENTS),
        "status_callback_method": "POST",
    }
    if spec.machine_detection:
        params["machine_detection"] = _AMD[spec.machine_detection]
        params["async_amd"] = "true"
        params["async_amd_status_callback"] = spec.status_url
        params["async_amd_status_callback_method"] = "POST"
    if spec.ring_timeout:
        params["timeout"] = spec.ring_timeout
    return params


def _refusal(error: Exception) -> ProviderRefused:
    if isinstance(error, TwilioException):
        status = getattr(error, "status", None)
        code = getattr(error, "code", None)
        reason = (
            getattr(error, "msg", None)
            or getattr(error, "detail", None)
            or getattr(error, "title", None)
            or "request refused"
        )
        reason = _SDK_PREFIX.sub("", str(reason))  # the SDK's "Unable to create record: " before Twilio's message
        return ProviderRefused(
            NAME,
            short_text(reason),
            status=int(status) if status else None,
            code=str(code) if code is not None else None,
        )
    return ProviderRefused(
        NAME,
        short_text(f"no answer from the Twilio API: {type(error).__name__}: {error}"),
        maybe_sent=maybe_sent(error),
    )


class TwilioRest:
    """One account's REST client; thread-safe for the calls made here."""

    name = NAME

    def __init__(
        self, account_sid: str, auth_token: str, *, api_base_url: str | None = None, timeout: float = 15.0
    ) -> None:
        # No automatic retries: a re-sent create could place the call twice.
        self.client = Client(account_sid, auth_token, http_client=TwilioHttpClient(timeout=timeout, max_retries=0))
        if api_base_url:
            self.client.api.base_url = api_base_url.rstrip("/")

    def create_call(self, spec: DialSpec) -> DialResult:
        """`POST /2010-04-01/Accounts/{sid}/Calls.json`; `ProviderRefused` on any failure."""
        try:
            call = self.client.calls.create(**create_call_params(spec))
        except (TwilioException, requests.RequestException, OSError) as error:
            raise _refusal(error) from None
        if not call.sid:
            raise ProviderRefused(NAME, "the answer carried no call sid")
        return DialResult(provider_call_id=call.sid, status=call.status, raw={"sid": call.sid, "status": call.status})

    def hangup(self, call_id: str, *, answered: bool) -> str | None:
        """End the call: `Status=completed` once answered, else `canceled` (then `completed`
        if Twilio says it was in progress after all). Returns Twilio's status after it."""
        try:
            call = self.client.calls(call_id).update(status="completed" if answered else "canceled")
            if not answered and call.status == "in-progress":
                call = self.client.calls(call_id).update(status="completed")
        except (TwilioException, requests.RequestException, OSError) as error:
            raise _refusal(error) from None
        status: str | None = call.status  # the SDK's CallInstance is untyped
        return status

    def fetch_call(self, call_id: str) -> ProviderCall:
        """The Calls resource: `status`, and `end_time` (RFC 2822) and `duration` (s) once it ended."""
        try:
            call = self.client.calls(call_id).fetch()
            ended = call.end_time.astimezone(UTC) if call.end_time else None
            return ProviderCall(status=call.status, ended_at=ended, duration=provider_seconds(call.duration))
        except (TwilioException, requests.RequestException, OSError) as error:
            raise _refusal(error) from None


def ended(status: str | None) -> bool:
    """Whether a Twilio status word means the call is over."""
    return (status or "") in _ENDED
