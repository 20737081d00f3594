"""`gateway webhooks test NAME`: render and send one webhook as a delivery would, and show the
request (secrets redacted), the answer, the verdict and what `response_mapping` would write."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from gateway.calls.record import CallRecord, utcnow
from gateway.calls.states import CallState
from gateway.commands.inspect import opened_store
from gateway.commands.output import CommandError, emit, emit_json
from gateway.config import GatewayConfig
from gateway.redact import redact_url


def sample_call(run_id: str) -> CallRecord:
    """A finished call to render templates against when no stored call is named."""
    now = utcnow()
    return CallRecord(
        workflow_run_id=run_id, workflow_id="sample-workflow", user_id="sample-user", provider="twilio",
        provider_call_id="CA" + "0" * 32, state=CallState.COMPLETED, from_number="+15550100", to_number="+15550199",
        direction="outbound", started_at=now - timedelta(seconds=75), answered_at=now - timedelta(seconds=60),
        ended_at=now, duration=60, initial_context={"customer": "sample"}, gathered_context={"resolution": "sample"},
        created_at=now - timedelta(seconds=75), updated_at=now,
    )


async def webhook_test(config: GatewayConfig, name: str, event_type: str | None, run_id: str | None, *,
                       as_json: bool = False) -> int:
    """Send one request; 0 when the subscription's rule calls the answer a success, else 1."""
    from gateway.events.envelope import Event, new_event_id
    from gateway.store.base import event_data
    from gateway.webhooks.attempts import delivery_context
    from gateway.webhooks.clients import EndpointClients
    from gateway.webhooks.policy import map_response
    from gateway.webhooks.sender import RequestBuildError, build_request, send_attempt

    subscription = next((s for s in config.webhooks if s.name == name), None)
    if subscription is None:
        raise CommandError(f"no webhook named {name!r}; configured: {', '.join(s.name for s in config.webhooks) or 'none'}")
    call = None
    if run_id:
        async with opened_store(config) as store:
            call = await store.get_call(run_id)
        if call is None:
            raise CommandError(f"no call with workflow_run_id {run_id!r} in {redact_url(config.store)}")
    call = call or sample_call("sample-run")
    kind = event_type or next((e for e in subscription.events if "*" not in e and "?" not in e), "call.ended")
    event = Event(type=kind, workflow_run_id=call.workflow_run_id, occurred_at=utcnow(), data=event_data(call))
    try:
        prepared = build_request(subscription, event.envelope(), delivery_context(event, call), config.secret_values(),
                                 message_id=new_event_id("msg"), now=time.time())
    except RequestBuildError as exc:
        raise CommandError(f"request could not be built: {exc}", 1) from None
    shown = prepared.redacted()
    if not as_json:
        emit(f"> {shown['method']} {shown['url']}")
        for header, value in shown["headers"].items():
            emit(f"> {header}: {value}")
        if shown["body"]:
            emit(">")
            emit(str(shown["body"]))
    clients = EndpointClients()
    try:
        result = await send_attempt(clients, prepared, subscription)
    finally:
        await clients.aclose()
    mapped: dict[str, Any] | None = None
    if subscription.response_mapping:
        mapped = map_response(subscription.name, result.status, result.response_json, subscription.response_mapping,
                              success=result.success)
    if as_json:
        emit_json({"request": shown, "status": result.status, "error": result.error, "latency_ms": result.latency_ms,
                   "response": result.response_text, "outcome": result.outcome.value, "success": result.success,
                   "gathered_context": mapped})
        return 0 if result.success else 1
    emit()
    if result.status is None:
        emit(f"< no answer: {result.error}")
    else:
        emit(f"< {result.status} in {result.latency_ms:.0f} ms")
        if result.response_text:
            emit(result.response_text)
    emit()
    emit(f"verdict: {result.outcome.value} ({'success' if result.success else 'not a success'} "
         f"by the rule {subscription.success.model_dump()})")
    if mapped is not None:
        emit("mapped into gathered_context:")
        emit(json.dumps(mapped, indent=2, default=str))
        emit(f"({subscription.name}_status_code and {subscription.name}_action_success are always added: the answer's "
             "status and the verdict, named as OpenDialog names its webhook attributes; see docs/webhooks.md)")
    return 0 if result.success else 1
