"""The admin API's bodies as pydantic models: the source of the OpenAPI document's schemas.

Request bodies that the routes validate with pydantic are those models themselves (`CallSpec`,
`CampaignSpec`); the rest describe what the routes write (each names the function that writes
it), and the contract tests (tests/api/test_openapi.py, the schemathesis run) hold the two to
each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deliveries import STATUSES
from gateway.calls.states import CallState

if TYPE_CHECKING:
    # Literals built at run time from the one list of each (pydantic reads them; mypy cannot).
    CallStateName = str
    DeliveryStatus = str
else:
    CallStateName = Literal[tuple(state.value for state in CallState)]
    DeliveryStatus = Literal[STATUSES]
Time = str  # RFC 3339, UTC, e.g. 2026-12-07T19:00:00.123456Z


class _Out(BaseModel):
    """A response body: the fields the route always writes; more may come in later versions."""

    model_config = ConfigDict(extra="allow")


class Problem(_Out):
    """RFC 9457 problem details (`application/problem+json`), `detail` saying what was wrong."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class Call(_Out):
    """`CallRecord.to_dict()`; media links signed afresh (`recordings.with_fresh_links`)."""

    workflow_run_id: str
    workflow_id: str | None
    user_id: str | None
    provider: str | None
    provider_call_id: str | None
    state: CallStateName
    from_: str | None = Field(alias="from")
    to: str | None
    direction: str | None
    started_at: Time | None
    answered_at: Time | None
    ended_at: Time | None
    duration: int | None
    voicemail: bool
    answered_by: str | None
    initial_context: dict[str, Any]
    gathered_context: dict[str, Any]
    annotations: dict[str, Any]
    cost_info: dict[str, Any]
    media: dict[str, Any] = Field(
        description="media session facts; `recording_url` and `transcript_url` are signed links"
    )
    created_at: Time | None
    updated_at: Time | None


class TimelineEntry(_Out):
    """`TimelineEntry.to_dict()`."""

    id: int
    received_at: Time | None
    source: str
    kind: str
    outcome: str
    raw_status: str | None
    state: str | None
    sequence: int | None
    data: dict[str, Any]


class CallWithTimeline(Call):
    """`GET /api/v1/calls/{workflow_run_id}`."""

    timeline: list[TimelineEntry]


class CallPage(_Out):
    calls: list[Call]
    next_cursor: str | None


class Event(_Out):
    """`Event.envelope()` and the store's `seq`."""

    id: str
    type: str
    timestamp: Time | None
    workflow_run_id: str | None
    data: dict[str, Any]


class StoredEvent(Event):
    seq: int


class EventPage(_Out):
    events: list[StoredEvent]
    next_after: int | None


class ClearRequested(_Out):
    workflow_run_id: str
    requested: Literal["clear"]
    instance: str | None


class HangupRequest(BaseModel):
    """`POST /api/v1/calls/{workflow_run_id}/hangup` (the body is optional)."""

    reason: str | None = Field(None, max_length=200)


class HangupRequested(_Out):
    workflow_run_id: str
    hangup: Literal["requested"]
    state: str
    provider: str | None
    provider_call_id: str | None
    provider_status: str | None


class _DeliveryRow(_Out):
    """`Delivery.to_dict()` but for `attempts`."""

    id: str
    subscription: str
    workflow_run_id: str | None
    event_id: str | None
    event_type: str | None
    status: DeliveryStatus
    next_attempt_at: Time | None
    first_attempt_at: Time | None
    schedule_started_at: Time | None  # where the retry schedule's total_timeout counts from
    last_attempt_at: Time | None
    last_status: int | None
    last_error: str | None
    created_at: Time | None
    updated_at: Time | None


class Delivery(_DeliveryRow):
    """`Delivery.to_dict()`."""

    attempts: int


class DeliveryPage(_Out):
    deliveries: list[Delivery]
    next_cursor: str | None


class SentRequest(_Out):
    """A request as sent, secrets redacted; `body` null when it was the event envelope."""

    method: str
    url: str
    headers: dict[str, str]
    body: str | None


class Attempt(_Out):
    """`AttemptRecord.to_dict()` (redacted by the sender)."""

    id: str
    attempted_at: Time | None
    outcome: str
    status: int | None
    latency_ms: float | None
    error: str | None
    response: str | None
    request: SentRequest | dict[str, Any]


class DeliveryDetail(_DeliveryRow):
    """`GET /api/v1/deliveries/{delivery_id}`: the row, its event and every attempt. (`attempts`
    is the list of attempts here, where a listing row carries their number.)"""

    event: Event | None
    attempts: list[Attempt]


class ReplayRequest(BaseModel):
    """`POST /api/v1/deliveries/replay`: queue the subscription's events of [since, until) again."""

    model_config = ConfigDict(extra="allow")

    subscription: str = Field(description="a configured webhook's name")
    since: str = Field(
        description="RFC 3339 time with a zone, e.g. 2026-12-07T18:00:00Z", json_schema_extra={"format": "date-time"}
    )
    until: str = Field(
        None,
        description="RFC 3339 time with a zone; default now",  # type: ignore[assignment]
        json_schema_extra={"format": "date-time"},
    )


class ReplayQueued(_Out):
    subscription: str
    queued: int


class Health(_Out):
    """`EndpointHealth.to_dict()`."""

    consecutive_failures: int
    disabled_at: Time | None
    first_failure_at: Time | None = None
    disabled_reason: str | None = None


class SubscriptionView(_Out):
    """A configured webhook (`deliveries.subscription_view`): every credential and signing secret
    is `[redacted]`; `auth` keeps only its `type` and public fields readable."""

    name: str
    enabled: bool
    events: list[str]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    url: str
    headers: dict[str, str]
    payload_template: Any
    payload_defaults: dict[str, Any]
    auth: dict[str, Any]
    signing: dict[str, Any]
    timeout: float
    retry: dict[str, Any]
    success: dict[str, Any]
    response_mapping: dict[str, str]
    store_raw_response: bool
    ordered: bool
    allow_networks: list[str]
    health: Health
    inputs: list[str] = Field(description="context paths the templates read: the fields of a test send")
    test_event: str = Field(description="the event a test send renders by default")


class SubscriptionList(_Out):
    subscriptions: list[SubscriptionView]


class Enabled(_Out):
    subscription: str
    enabled: Literal[True]


class TestSendRequest(BaseModel):
    """`POST /api/v1/subscriptions/{name}/test`."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(
        default_factory=dict,
        max_length=100,
        description='values by template context path, e.g. {"initial_context.tenant": "acme"}',
    )
    event: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$",
        max_length=64,
        description="the event type to render (default: the subscription's first)",
    )
    run: str | None = Field(
        None, min_length=1, max_length=128, description="render for this stored call instead of a sample"
    )


class TestResponse(_Out):
    status: int | None
    body: str
    latency_ms: float
    error: str | None


class Verdict(_Out):
    outcome: Literal["success", "retry", "fail", "disable"]
    success: bool


class TestSendResult(_Out):
    """`Trial.to_dict()`: what a test send did, secrets redacted; nothing was recorded."""

    subscription: str
    event: str
    request: SentRequest
    response: TestResponse
    verdict: Verdict
    mapped: dict[str, Any]


class Campaign(_Out):
    """`payloads.campaign_view`."""

    id: str
    name: str | None
    workflow_id: str
    user_id: str
    provider: str
    from_: str = Field(alias="from")
    status: Literal["running", "paused", "completed", "failed", "canceled"]
    statistics: dict[str, Any]
    progress: dict[str, Any]
    quota_reached: str | None
    error: dict[str, Any] | None
    options: dict[str, Any]
    timestamps: dict[str, Any]


class CampaignCreated(Campaign):
    duplicates_dropped: int
    webhook_secret: str | None = Field(None, description="shown once: signs the campaign's inline webhooks")


class CampaignPage(_Out):
    campaigns: list[Campaign]
    next_cursor: str | None


class Contact(_Out):
    """`payloads.contact_view`."""

    position: int
    phone: str
    name: str | None
    context: dict[str, Any]
    status: str
    attempts: int
    outcome: str | None
    workflow_run_id: str | None
    next_attempt_at: Time | None


class ContactPage(_Out):
    contacts: list[Contact]
    next_after: int | None


class TunnelStatus(_Out):
    """`tunnel.status.describe`."""

    public_url: str | None
    origin: str
    websocket_origin: str
    mode: Literal["fixed", "request", "tunnel"]
    tunnel: dict[str, Any] | None
    detail: str
