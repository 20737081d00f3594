"""What the REST dialing modules (`twilio_rest`, `vonage_rest`) share: the call to place, the
provider's answer, and its refusal. The modules are synchronous (the SDKs are); callers run
them in a thread executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import requests
import urllib3

from gateway.errors import GatewayError

MACHINE_DETECTION = ("detect", "message_end")
"""`detect`: report human/machine as soon as known; `message_end`: wait for the greeting's end."""


@dataclass(frozen=True)
class DialSpec:
    """One outbound call as the gateway asks a provider for it. URLs are absolute and public."""

    to: str
    from_: str
    answer_url: str
    status_url: str
    machine_detection: str | None = None  # None | "detect" | "message_end"
    ring_timeout: int | None = None  # seconds the callee's phone may ring
    ncco: list[dict[str, Any]] | None = None  # Vonage: answer inline instead of fetching answer_url


@dataclass(frozen=True)
class DialResult:
    """The provider accepted the call. `provider_call_id` is None when the answer carries none
    (Telnyx's TeXML create, Plivo's request uuid): the first callback brings it."""

    provider_call_id: str | None
    status: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderCall:
    """A call as the provider's REST API reports it now (reconciliation): its status word and,
    once it ended, when and how long it talked, as the provider counts them."""

    status: str | None
    ended_at: datetime | None = None  # aware UTC
    duration: int | None = None  # seconds


def provider_seconds(value: Any) -> int | None:
    """A provider's duration field (a number or digits) as whole seconds; None when absent or not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return max(0, int(value))
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class ProviderRefused(GatewayError):
    """The provider did not take the request (an error answer, or no answer at all).

    `status` is the HTTP status (None: no HTTP answer, e.g. unreachable); `code` the provider's
    own error code when it gave one; `reason` is short, safe to show and store (no secrets).
    """

    def __init__(
        self,
        provider: str,
        reason: str,
        *,
        status: int | None = None,
        code: str | None = None,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason
        self.status = status
        self.code = code
        self.maybe_sent = maybe_sent  # no answer, but the request may have reached the provider

    @property
    def auth_failed(self) -> bool:
        """The provider refused the gateway's credentials (nothing else will work either)."""
        return self.status in (401, 403)

    @property
    def retryable(self) -> bool:
        """No answer, a rate limit or a server error: trying again later may work."""
        return self.status is None or self.status == 429 or self.status >= 500

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "reason": self.reason, "status": self.status, "code": self.code}


def maybe_sent(error: BaseException) -> bool:
    """Whether a request that got no answer may still have reached the server: only a
    connection that was never made (refused, unresolvable, connect timeout) surely did not."""
    if isinstance(error, requests.ConnectTimeout):
        return False
    if isinstance(error, requests.ConnectionError):
        cause = error.args[0] if error.args else None
        cause = getattr(cause, "reason", cause)  # urllib3's MaxRetryError wraps the real one
        if isinstance(cause, urllib3.exceptions.NewConnectionError):
            return False
    return True


class ProviderRest(Protocol):
    """A provider's REST API as the dialer uses it (blocking calls)."""

    name: str

    def create_call(self, spec: DialSpec) -> DialResult: ...

    def hangup(self, call_id: str, *, answered: bool) -> str | None: ...

    def fetch_call(self, call_id: str) -> ProviderCall: ...


def short_text(value: Any, limit: int = 300) -> str:
    """One line of at most `limit` characters, for reasons stored and shown."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
