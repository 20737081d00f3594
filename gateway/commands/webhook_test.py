"""`gateway webhooks test NAME`: render and send one webhook as a delivery would (through
`webhooks.trial`, as the console's test panel does), and show the request (secrets redacted),
the answer, the verdict and what `response_mapping` would write."""

from __future__ import annotations

import json

from gateway.commands.inspect import opened_store
from gateway.commands.output import CommandError, emit, emit_json
from gateway.config import GatewayConfig
from gateway.redact import redact_url


async def webhook_test(
    config: GatewayConfig, name: str, event_type: str | None, run_id: str | None, *, as_json: bool = False
) -> int:
    """Send one request; 0 when the subscription's rule calls the answer a success, else 1."""
    from gateway.webhooks.sender import RequestBuildError
    from gateway.webhooks.trial import run_trial

    subscription = next((s for s in config.webhooks if s.name == name), None)
    if subscription is None:
        raise CommandError(
            f"no webhook named {name!r}; configured: {', '.join(s.name for s in config.webhooks) or 'none'}"
        )
    call = None
    if run_id:
        async with opened_store(config) as store:
            call = await store.get_call(run_id)
        if call is None:
            raise CommandError(f"no call with workflow_run_id {run_id!r} in {redact_url(config.store)}")
    try:
        trial = await run_trial(subscription, config.secret_values(), event_type=event_type, call=call)
    except RequestBuildError as exc:
        raise CommandError(f"request could not be built: {exc}", 1) from None
    shown = trial.request
    if as_json:
        emit_json(
            {
                "request": shown,
                "status": trial.status,
                "error": trial.error,
                "latency_ms": trial.latency_ms,
                "response": trial.response_text,
                "outcome": trial.outcome,
                "success": trial.success,
                "gathered_context": trial.mapped if subscription.response_mapping else None,
            }
        )
        return 0 if trial.success else 1
    emit(f"> {shown['method']} {shown['url']}")
    for header, value in shown["headers"].items():
        emit(f"> {header}: {value}")
    if shown["body"]:
        emit(">")
        emit(str(shown["body"]))
    emit()
    if trial.status is None:
        emit(f"< no answer: {trial.error}")
    else:
        emit(f"< {trial.status} in {trial.latency_ms:.0f} ms")
        if trial.response_text:
            emit(trial.response_text)
    emit()
    emit(
        f"verdict: {trial.outcome} ({'success' if trial.success else 'not a success'} "
        f"by the rule {subscription.success.model_dump()})"
    )
    if subscription.response_mapping:
        emit("mapped into gathered_context:")
        emit(json.dumps(trial.mapped, indent=2, default=str))
        emit(
            f"({subscription.name}_status_code and {subscription.name}_action_success are always added: the answer's "
            "status and the verdict, named as OpenDialog names its webhook attributes; see docs/webhooks.md)"
        )
    return 0 if trial.success else 1
