"""The one list of event names the gateway emits."""

from __future__ import annotations

from gateway.calls.states import CallState

CALL_INITIATED = "call.initiated"
CALL_RINGING = "call.ringing"
CALL_ANSWERED = "call.answered"
CALL_COMPLETED = "call.completed"
CALL_BUSY = "call.busy"
CALL_NO_ANSWER = "call.no_answer"
CALL_FAILED = "call.failed"
CALL_CANCELED = "call.canceled"
CALL_STARTED = "call.started"
CALL_ENDED = "call.ended"
CALL_VOICEMAIL_DETECTED = "call.voicemail_detected"
CALL_AGENT_FAILED = "call.agent_failed"
CONVERSATION_TRANSCRIPT = "conversation.transcript"
CONVERSATION_INTENT_DETECTED = "conversation.intent_detected"
CONVERSATION_ENTITY_CAPTURED = "conversation.entity_captured"
WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled"
CAMPAIGN_STARTED = "campaign.started"
CAMPAIGN_PAUSED = "campaign.paused"
CAMPAIGN_COMPLETED = "campaign.completed"
CAMPAIGN_FAILED = "campaign.failed"
CAMPAIGN_QUOTA_REACHED = "campaign.quota_reached"
CAMPAIGN_CANCELED = "campaign.canceled"
BATCH_COMPLETED = "batch.completed"
BATCH_CALL_COMPLETED = "batch.call_completed"  # the per-call record (Dialgen onCallComplete)
BATCH_FAILED = "batch.failed"

STATE_EVENT: dict[CallState, str] = {
    CallState.INITIATED: CALL_INITIATED,
    CallState.RINGING: CALL_RINGING,
    CallState.ANSWERED: CALL_ANSWERED,
    CallState.COMPLETED: CALL_COMPLETED,
    CallState.BUSY: CALL_BUSY,
    CallState.NO_ANSWER: CALL_NO_ANSWER,
    CallState.FAILED: CALL_FAILED,
    CallState.CANCELED: CALL_CANCELED,
}

ALL_EVENTS: tuple[str, ...] = tuple(
    value for name, value in sorted(globals().items()) if name.isupper() and isinstance(value, str)
)
