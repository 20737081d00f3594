"""A test send of one subscription: render its templates for a sample (or real) call with the
inputs a person filled in, send through the same sender as deliveries (SSRF guard, auth,
signing, success rule), and say what happened. Nothing is written to the outbox.

`gateway webhooks test` and `POST /api/v1/subscriptions/{name}/test` both use it. Everything in
a `Trial` is redacted: the request as an attempt record shows it, the answer through the
request's redactor, and the mapped attributes likewise.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gateway.calls.record import CallRecord, utcnow
from gateway.calls.states import CallState
from gateway.errors import GatewayError
from gateway.events.envelope import Event, new_event_id
from gateway.store.base import event_data
from gateway.webhooks.attempts import delivery_context
from gateway.webhooks.clients import EndpointClients
from gateway.webhooks.policy import map_response
from gateway.webhooks.sender import build_request, send_attempt
from gateway.webhooks.subscription import Subscription

MAX_INPUTS = 100


class TrialInputError(GatewayError, ValueError):
    """An input that cannot be placed in the template context (names the input)."""


def sample_call(run_id: str = "sample-run") -> CallRecord:
    """A completed outbound call with plausible values, for templates to read."""
    now = utcnow()
    return CallRecord(
        workflow_run_id=run_id,
        workflow_id="sample-workflow",
        user_id="sample-user",
        provider="twilio",
        provider_call_id="CA" + "0" * 32,
        state=CallState.COMPLETED,
        from_number="+15550100",
        to_number="+15550199",
        direction="outbound",
        started_at=now - timedelta(seconds=75),
        answered_at=now - timedelta(seconds=60),
        ended_at=now,
        duration=60,
        initial_context={"customer": "sample"},
        gathered_context={"resolution": "sample"},
        created_at=now - timedelta(seconds=75),
        updated_at=now,
    )


def default_event_type(subscription: Subscription) -> str:
    """The first event name the subscription takes literally (no glob), else `call.ended`."""
    return next((e for e in subscription.events if not any(c in e for c in "*?[")), "call.ended")


def _place(context: dict[str, Any], path: str, value: Any) -> None:
    """Set `context[a][b]... = value` for `path` "a.b...", making the dicts on the way."""
    segments = path.split(".")
    if not all(segments) or segments[0] in ("secret", "_auth", "_request", "vars"):
        raise TrialInputError(f"inputs.{path[:80]}: not a template context path")
    node = context
    for segment in segments[:-1]:
        child = node.get(segment)
        if not isinstance(child, dict):
            child = {} if child is None or not isinstance(child, list) else dict(enumerate(child))
            node[segment] = child
        node = child
    node[segments[-1]] = value


def trial_context(event: Event, call: CallRecord, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The delivery context of `event` for `call`, each input placed at its dotted path."""
    if len(inputs) > MAX_INPUTS:
        raise TrialInputError(f"inputs: at most {MAX_INPUTS} values")
    context = delivery_context(event, call)
    for path, value in inputs.items():
        _place(context, path, value)
    if not isinstance(context["event"], dict):  # the envelope: the default body is made of it
        raise TrialInputError("inputs.event: the event envelope must stay an object (set event.data.NAME instead)")
    return context


@dataclass(frozen=True)
class Trial:
    """What a test send did: request sent, answer, verdict, mapped attributes (all redacted)."""

    subscription: str
    event_type: str
    request: dict[str, Any]
    status: int | None
    latency_ms: float
    response_text: str
    error: str | None
    outcome: str
    success: bool
    mapped: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "subscription": self.subscription,
            "event": self.event_type,
            "request": self.request,
            "response": {
                "status": self.status,
                "body": self.response_text,
                "latency_ms": self.latency_ms,
                "error": self.error,
            },
            "verdict": {"outcome": self.outcome, "success": self.success},
            "mapped": self.mapped,
        }


async def run_trial(
    subscription: Subscription,
    secrets: Mapping[str, str],
    *,
    inputs: Mapping[str, Any] | None = None,
    event_type: str | None = None,
    call: CallRecord | None = None,
    clients: EndpointClients | None = None,
) -> Trial:
    """Render and send one test request. Raises `RequestBuildError` (no secret in its text)
    when the templates cannot be rendered, `TrialInputError` for an unusable input."""
    call = call or sample_call()
    kind = event_type or default_event_type(subscription)
    event = Event(type=kind, workflow_run_id=call.workflow_run_id, occurred_at=utcnow(), data=event_data(call))
    context = trial_context(event, call, inputs or {})
    prepared = build_request(
        subscription, context["event"], context, secrets, message_id=new_event_id("msg"), now=time.time()
    )
    own = clients is None
    clients = clients or EndpointClients()
    try:
        sent = await send_attempt(clients, prepared, subscription)
    finally:
        if own:
            await clients.aclose()
    request = dict(sent.request)
    if request.get("body") is None and prepared.body:  # the envelope body: a test shows what went out
        request["body"] = prepared.redacted()["body"]
    redactor = prepared.redactor()
    mapped = map_response(
        subscription.name,
        sent.status,
        sent.response_json,
        subscription.response_mapping,
        success=sent.success,
        raw_text=sent.response_text if subscription.store_raw_response else None,
    )
    return Trial(
        subscription=subscription.name,
        event_type=kind,
        request=request,
        status=sent.status,
        latency_ms=sent.latency_ms,
        response_text=sent.response_text,
        error=sent.error,
        outcome=sent.outcome.value,
        success=sent.success,
        mapped=redactor.value(mapped),
    )
