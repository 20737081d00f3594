"""Vonage's Voice REST API for dialing and hanging up, through the `vonage` package (v4).
Blocking: run these methods in a thread executor.

Requests are authenticated with an RS256 application JWT made from `application_id` and the
private key. `create_call` sends `answer_url` (the gateway's initial webhook) or an inline NCCO,
`event_url` (the status callback) and machine detection when asked. `api_base_url` replaces
`https://api.nexmo.com`; with an `http://` base (a local stand-in in tests) a transport adapter
sends the SDK's `https://` requests for that host over plain HTTP.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError
from requests.adapters import HTTPAdapter
from vonage import Auth, HttpClientOptions, Vonage
from vonage_http_client.errors import HttpRequestError
from vonage_utils.errors import VonageError
from vonage_voice import Connect, CreateCallRequest, WebsocketEndpoint

from gateway.errors import GatewayError
from gateway.providers.base import iso_utc
from gateway.providers.rest import (
    DialResult,
    DialSpec,
    ProviderCall,
    ProviderRefused,
    maybe_sent,
    provider_seconds,
    short_text,
)

NAME = "vonage"
DEFAULT_API_HOST = "api.nexmo.com"
_ENDED = frozenset({"completed", "busy", "cancelled", "failed", "rejected", "timeout", "unanswered"})


class PrivateKeyError(GatewayError, ValueError):
    """The configured private key cannot be used (message names the problem, not the key)."""


def load_private_key(value: str) -> str:
    """PKCS#8 PEM text from a path or PEM text (PKCS#1 `RSA PRIVATE KEY` is converted)."""
    text = value.strip()
    if "-----BEGIN" not in text:
        try:
            text = Path(text).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise PrivateKeyError(
                f"cannot read the private key file: {getattr(error, 'strerror', None) or error}"
            ) from None
    try:
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise PrivateKeyError("not an unencrypted PEM private key") from None
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def vonage_number(number: str) -> str:
    """Vonage wants E.164 digits without the `+`."""
    return number.strip().removeprefix("+")


def create_call_request(spec: DialSpec) -> CreateCallRequest:
    """The SDK request for `spec`. Pure."""
    params: dict[str, Any] = {
        "to": [{"type": "phone", "number": vonage_number(spec.to)}],
        "from_": {"type": "phone", "number": vonage_number(spec.from_)},
        "event_url": [spec.status_url],
        "event_method": "POST",
    }
    if spec.ncco is not None:
        params["ncco"] = [_sdk_action(action, vonage_number(spec.from_)) for action in spec.ncco]
    else:
        params["answer_url"] = [spec.answer_url]
    if spec.machine_detection == "detect":
        params["machine_detection"] = "continue"
    elif spec.machine_detection == "message_end":
        params["advanced_machine_detection"] = {"behavior": "continue", "mode": "detect_beep"}
    if spec.ring_timeout:
        params["ringing_timer"] = max(1, min(int(spec.ring_timeout), 120))
    return CreateCallRequest(**params)


def _sdk_action(action: dict[str, Any], from_number: str) -> Any:
    """The SDK model of one NCCO action. A websocket `connect` (the gateway's own answer) is
    rebuilt field by field: the SDK names `content-type` `contentType` and wants a `from`."""
    if action.get("action") != "connect":
        return action
    endpoints = []
    for endpoint in action.get("endpoint", []):
        if endpoint.get("type") != "websocket":
            return action
        endpoints.append(
            WebsocketEndpoint(
                uri=endpoint["uri"], contentType=endpoint.get("content-type"), headers=endpoint.get("headers")
            )
        )
    return Connect(
        endpoint=endpoints,
        from_=action.get("from") or from_number,
        eventType=action.get("eventType"),
        eventUrl=action.get("eventUrl"),
    )


class _PlainHttp(HTTPAdapter):
    """Sends the SDK's `https://host` requests to `http://host` (local stand-ins only)."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if request.url and request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, *args, **kwargs)


def _refusal(error: Exception) -> ProviderRefused:
    if isinstance(error, HttpRequestError):
        response = error.response
        reason, code = None, None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            reason = body.get("detail") or body.get("title") or body.get("error_title")
            code = body.get("type") or body.get("code")
        return ProviderRefused(
            NAME,
            short_text(reason or response.text or f"HTTP {response.status_code}"),
            status=response.status_code,
            code=short_text(code, 120) if code else None,
        )
    if isinstance(error, (ValidationError, VonageError)) and not isinstance(error, HttpRequestError):
        return ProviderRefused(
            NAME, short_text(f"request not accepted by the SDK: {error}"), status=400, code="invalid_request"
        )
    return ProviderRefused(
        NAME,
        short_text(f"no answer from the Vonage API: {type(error).__name__}: {error}"),
        maybe_sent=maybe_sent(error),
    )


class VonageRest:
    """One application's REST client. The SDK's HTTP client keeps per-request state, so each
    thread gets its own (JWTs are minted per request either way)."""

    name = NAME

    def __init__(
        self, application_id: str, private_key: str, *, api_base_url: str | None = None, timeout: float = 15.0
    ) -> None:
        self.application_id = application_id
        self.private_key = load_private_key(private_key)
        parts = urlsplit(api_base_url.rstrip("/")) if api_base_url else None
        self.api_host = (parts.netloc + parts.path) if parts else DEFAULT_API_HOST
        self.plain_http = bool(parts and parts.scheme == "http")
        self.timeout = max(1, round(timeout))
        self._local = threading.local()
        self._client()  # fail now, not on the first call, if the SDK rejects the settings

    def _client(self) -> Vonage:
        client = getattr(self._local, "client", None)
        if client is None:
            # pool_maxsize=1: one connection per thread, and the SDK's resend-on-disconnect
            # loop (bounded by it) never sends a create twice; max_retries=0 likewise.
            options = HttpClientOptions(
                api_host=self.api_host, timeout=self.timeout, pool_connections=1, pool_maxsize=1, max_retries=0
            )
            client = Vonage(Auth(application_id=self.application_id, private_key=self.private_key), options)
            if self.plain_http:
                client.http_client._session.mount(f"https://{self.api_host.split('/')[0]}", _PlainHttp(max_retries=0))
            self._local.client = client
        return client

    def create_call(self, spec: DialSpec) -> DialResult:
        """`POST /v1/calls`; `ProviderRefused` on any failure."""
        try:
            request = create_call_request(spec)
            answer = self._client().voice.create_call(request)
        except (HttpRequestError, ValidationError, VonageError, requests.RequestException, OSError) as error:
            raise _refusal(error) from None
        return DialResult(
            provider_call_id=answer.uuid,
            status=answer.status,
            raw={"uuid": answer.uuid, "status": answer.status, "conversation_uuid": answer.conversation_uuid},
        )

    def hangup(self, call_id: str, *, answered: bool) -> str | None:
        """`PUT /v1/calls/{uuid}` `{"action": "hangup"}`."""
        try:
            self._client().voice.hangup(call_id)
        except (HttpRequestError, VonageError, requests.RequestException, OSError) as error:
            raise _refusal(error) from None
        return None

    def fetch_call(self, call_id: str) -> ProviderCall:
        """`GET /v1/calls/{uuid}`: `status`, and `end_time` and `duration` (s) once it ended."""
        try:
            call = self._client().voice.get_call(call_id)
            return ProviderCall(
                status=call.status, ended_at=iso_utc(call.end_time), duration=provider_seconds(call.duration)
            )
        except (HttpRequestError, ValidationError, VonageError, requests.RequestException, OSError) as error:
            raise _refusal(error) from None


def ended(status: str | None) -> bool:
    """Whether a Vonage status word means the call is over."""
    return (status or "") in _ENDED
