"""The campaign rules, pure: what a finished call means for its contact, when the calling
window is open, how calls are paced, when a quota is reached, and the statistics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.calls.record import CallRecord
from gateway.calls.states import CallState
from gateway.dial.spec import CampaignOptions, RetryOptions, Window
from gateway.store.campaigns import Campaign

INTERRUPTED = "interrupted"  # the dial's outcome is unknown (the gateway stopped, or no answer came): never retried
_STATE_OUTCOME = {
    CallState.COMPLETED: "succeeded",
    CallState.BUSY: "busy",
    CallState.NO_ANSWER: "no-answer",
    CallState.FAILED: "failed",
    CallState.CANCELED: "canceled",
}


def classify(record: CallRecord) -> str:
    """The outcome of an ended call: succeeded, voicemail, busy, no-answer, failed, canceled
    or interrupted."""
    if record.annotations.get("dial_interrupted"):
        return INTERRUPTED
    if record.voicemail:
        return "voicemail"
    return _STATE_OUTCOME.get(record.state, "failed")


def after_call(outcome: str, attempts: int, retry: RetryOptions) -> tuple[str, float | None]:
    """(contact status, seconds until the next call or None) after a call with `outcome`,
    the contact's `attempts`-th."""
    if outcome == "succeeded":
        return "succeeded", None
    if outcome in retry.on and attempts < 1 + retry.max:
        return "retry", retry.delay
    return "failed", None


def window_open(now: datetime, window: Window | None) -> bool:
    """Whether new calls may start at `now` (aware)."""
    if window is None:
        return True
    local = now.astimezone(ZoneInfo(window.timezone))
    start, end = window.bounds()
    at = local.time().replace(tzinfo=None)
    if start < end:
        inside, day = start <= at < end, local.weekday()
    else:  # spans midnight: the hours after midnight belong to the previous day's window
        inside = at >= start or at < end
        day = local.weekday() if at >= start else (local.weekday() - 1) % 7
    return inside and (window.days is None or day in window.days)


def next_opening(now: datetime, window: Window) -> datetime:
    """The next time (UTC) the window opens after `now`."""
    zone = ZoneInfo(window.timezone)
    local = now.astimezone(zone)
    start, _ = window.bounds()
    for offset in range(0, 8):
        day = local.date() + timedelta(days=offset)
        candidate = datetime.combine(day, start, tzinfo=zone)
        if candidate > local and (window.days is None or candidate.weekday() in window.days):
            return candidate.astimezone(UTC)
    return (local + timedelta(days=7)).astimezone(UTC)


class Pacer:
    """Spaces call starts `1 / calls_per_second` apart (monotonic seconds)."""

    def __init__(self, calls_per_second: float) -> None:
        self.interval = 1.0 / calls_per_second
        self.next_at = 0.0

    def slots(self, now: float, horizon: float, limit: int) -> list[float]:
        """Start times for up to `limit` calls from now to `now + horizon`."""
        out: list[float] = []
        at = max(self.next_at, now)
        while len(out) < limit and at <= now + horizon:
            out.append(at)
            at += self.interval
        return out

    def use(self, slots: list[float]) -> None:
        """Record that `slots` were taken (the next free one follows the last)."""
        if slots:
            self.next_at = slots[-1] + self.interval


def quota_reached(campaign: Campaign, options: CampaignOptions) -> str | None:
    """`max_calls` or `max_minutes` when that limit stops new calls, else None."""
    if options.max_calls and campaign.dialed >= options.max_calls:
        return "max_calls"
    if options.max_minutes and campaign.minutes_used >= options.max_minutes:
        return "max_minutes"
    return None


def _number(value: float) -> float | int:
    value = round(value, 2)
    return int(value) if float(value).is_integer() else value


def statistics(campaign: Campaign) -> dict[str, Any]:
    """Dialgen's batch statistics: a contact is processed once it succeeded or finally failed."""
    succeeded = campaign.count("succeeded")
    failed = campaign.count("failed")
    processed = succeeded + failed
    total = campaign.total
    return {
        "total": total,
        "processed": processed,
        "succeeded": succeeded,
        "failed": failed,
        "percentComplete": _number(100.0 * processed / total) if total else 0,
        "successRate": _number(100.0 * succeeded / processed) if processed else 0,
    }
