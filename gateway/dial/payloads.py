"""What the outside world sees of a campaign: the API view, the `campaign.*` event data and
the Dialgen-compatible webhook bodies (`batch.completed`, the per-call record, `batch.failed`).
Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.calls.record import CallRecord
from gateway.dial.policy import statistics
from gateway.store.campaigns import Campaign, CampaignContact

_DIALGEN_STATUS = {
    "succeeded": "COMPLETED",
    "voicemail": "VOICEMAIL",
    "busy": "BUSY",
    "no-answer": "NO_ANSWER",
    "failed": "FAILED",
    "canceled": "CANCELED",
    "interrupted": "FAILED",
}


def stamp(value: datetime | None) -> str | None:
    """`2025-11-15T14:00:00.000Z` (milliseconds, UTC), as Dialgen writes times."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def timestamps(campaign: Campaign) -> dict[str, str | None]:
    return {
        "createdAt": stamp(campaign.created_at),
        "startedAt": stamp(campaign.started_at),
        "completedAt": stamp(campaign.completed_at),
    }


def campaign_view(campaign: Campaign) -> dict[str, Any]:
    """The API's campaign object (no secrets)."""
    return {
        "id": campaign.id,
        "name": campaign.name,
        "workflow_id": campaign.workflow_id,
        "user_id": campaign.user_id,
        "provider": campaign.provider,
        "from": campaign.from_number,
        "status": campaign.status,
        "statistics": statistics(campaign),
        "progress": {
            "pending": campaign.count("pending"),
            "in_progress": campaign.count("dialing"),
            "waiting_retry": campaign.count("retry"),
            "succeeded": campaign.count("succeeded"),
            "failed": campaign.count("failed"),
            "skipped": campaign.count("skipped"),
            "canceled": campaign.count("canceled"),
            "calls_placed": campaign.dialed,
            "minutes_used": campaign.minutes_used,
        },
        "quota_reached": campaign.quota,
        "error": {"message": campaign.error, "code": campaign.error_code} if campaign.error else None,
        "options": campaign.options,
        "timestamps": {**timestamps(campaign), "updatedAt": stamp(campaign.updated_at)},
    }


def contact_view(contact: CampaignContact) -> dict[str, Any]:
    return {
        "position": contact.position,
        "phone": contact.phone,
        "name": contact.name,
        "context": contact.context,
        "status": contact.status,
        "attempts": contact.attempts,
        "outcome": contact.outcome,
        "workflow_run_id": contact.workflow_run_id,
        "next_attempt_at": stamp(contact.next_attempt_at),
    }


def campaign_event_data(campaign: Campaign, **detail: Any) -> dict[str, Any]:
    """The data of a `campaign.*` event."""
    data: dict[str, Any] = {"campaign": campaign_view(campaign)}
    if detail:
        data["detail"] = detail
    return data


def batch_completed(campaign: Campaign) -> dict[str, Any]:
    """Dialgen `onBatchComplete`."""
    body: dict[str, Any] = {
        "event": "batch.completed",
        "batchId": campaign.id,
        "agentId": campaign.workflow_id,
        "userId": campaign.user_id,
        "statistics": statistics(campaign),
        "timestamps": timestamps(campaign),
    }
    if campaign.quota:
        body["stopReason"] = "quota_reached"
        body["quota"] = campaign.quota
    return body


def batch_failed(campaign: Campaign, error: str, code: str, at: datetime) -> dict[str, Any]:
    """Dialgen `onBatchFailed`."""
    return {
        "event": "batch.failed",
        "batchId": campaign.id,
        "agentId": campaign.workflow_id,
        "userId": campaign.user_id,
        "error": error,
        "code": code,
        "timestamp": stamp(at),
    }


def call_completed(
    campaign: Campaign,
    contact: CampaignContact,
    record: CallRecord,
    outcome: str,
    transcription: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Dialgen `onCallComplete`: `{success, callData}` for one finished call."""
    media = record.media or {}
    return {
        "success": outcome == "succeeded",
        "callData": {
            "id": record.workflow_run_id,
            "contactId": f"{campaign.id}:{contact.position}",
            "agentId": campaign.workflow_id,
            "batchId": campaign.id,
            "userId": campaign.user_id,
            "status": _DIALGEN_STATUS.get(outcome, "FAILED"),
            "outcome": outcome,
            "attempt": contact.attempts,
            "startTime": stamp(record.answered_at or record.started_at),
            "endTime": stamp(record.ended_at),
            "duration": record.duration or 0,
            "phoneNumber": contact.phone,
            "contactName": contact.name,
            "contactContext": contact.context,
            "provider": record.provider,
            "providerCallId": record.provider_call_id,
            "transcription": list(transcription),
            "recordingUrl": media.get("recording_url"),
            "transcriptUrl": media.get("transcript_url"),
            "summary": record.gathered_context.get("summary") if isinstance(record.gathered_context, dict) else None,
            "metricJson": record.gathered_context,
        },
    }


def transcript_lines(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """Final transcript lines (`transcript` timeline entries) as `{role, text, at}`."""
    lines = []
    for entry in entries:
        if entry.kind != "transcript":
            continue
        at = entry.data.get("at")
        when = datetime.fromtimestamp(at, UTC) if isinstance(at, (int, float)) else entry.received_at
        lines.append({"role": entry.data.get("role"), "text": entry.data.get("text"), "at": stamp(when)})
    return lines
