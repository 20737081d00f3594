"""The values the store keeps for campaigns (see `gateway.dial`): the campaign, its contacts,
and the events a campaign change writes together with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.events.envelope import Event

CAMPAIGN_STATUSES = ("running", "paused", "completed", "failed", "canceled")
CAMPAIGN_FINAL = frozenset({"completed", "failed", "canceled"})
CONTACT_STATUSES = ("pending", "dialing", "retry", "succeeded", "failed", "skipped", "canceled")
CONTACT_WAITING = ("pending", "retry")  # will be dialed (again)
CONTACT_FINAL = frozenset({"succeeded", "failed", "skipped", "canceled"})
CAMPAIGN_COLUMNS = (
    "id",
    "name",
    "workflow_id",
    "user_id",
    "provider",
    "from_number",
    "status",
    "options",
    "origin",
    "webhook_secret",
    "total",
    "dialed",
    "quota",
    "error",
    "error_code",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
)
"""The `campaigns` table's columns, in one order for every backend (`Campaign` field names)."""
CAMPAIGN_UPDATABLE = frozenset({"quota", "error", "error_code", "started_at", "completed_at"})
"""The columns `update_campaign` may set besides the status."""


@dataclass
class Campaign:
    """One campaign as stored; `counts` (contacts per status) and `minutes_used` are filled
    by the store's reads."""

    id: str
    workflow_id: str
    user_id: str
    provider: str
    from_number: str
    status: str
    options: dict[str, Any]
    origin: str
    total: int
    created_at: datetime
    updated_at: datetime
    name: str | None = None
    webhook_secret: str | None = None
    dialed: int = 0
    quota: str | None = None
    error: str | None = None
    error_code: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    minutes_used: float = 0.0

    @property
    def final(self) -> bool:
        return self.status in CAMPAIGN_FINAL

    def count(self, *statuses: str) -> int:
        return sum(self.counts.get(status, 0) for status in statuses)


@dataclass
class CampaignContact:
    """One contact of a campaign and where its calls stand."""

    campaign_id: str
    position: int
    phone: str
    status: str = "pending"
    name: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    next_attempt_at: datetime | None = None
    workflow_run_id: str | None = None
    outcome: str | None = None
    updated_at: datetime | None = None


@dataclass
class CampaignEvent:
    """An event a campaign change writes, and the campaign's own inline webhook subscriptions
    that receive it besides the configured ones (delivery rows in the same transaction)."""

    event: Event
    inline: Sequence[str] = ()


__all__ = [
    "CAMPAIGN_COLUMNS",
    "CAMPAIGN_FINAL",
    "CAMPAIGN_STATUSES",
    "CAMPAIGN_UPDATABLE",
    "CONTACT_FINAL",
    "CONTACT_STATUSES",
    "CONTACT_WAITING",
    "Campaign",
    "CampaignContact",
    "CampaignEvent",
]
