"""The SQLite side of campaigns: a mixin for `SQLiteStore` (kept apart from the call and
outbox code). Every change runs in one writer transaction with the events it causes and
their delivery rows, configured subscriptions and the campaign's inline ones alike.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from gateway.calls.record import CallRecord
from gateway.store.base import StoreError, clamp_limit
from gateway.store.campaigns import CAMPAIGN_COLUMNS, CAMPAIGN_UPDATABLE, Campaign, CampaignContact, CampaignEvent
from gateway.store.paging import SQLITE, page_query, split_page
from gateway.store.sqlite_calls import load_call
from gateway.store.sqlite_events import SQLiteEvents, Written
from gateway.store.sqlite_rows import parse_ts, ts

T = TypeVar("T")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _campaign(row: sqlite3.Row) -> Campaign:
    values = {name: row[name] for name in CAMPAIGN_COLUMNS}
    values["options"] = json.loads(values["options"])
    for name in ("created_at", "started_at", "completed_at", "updated_at"):
        values[name] = parse_ts(values[name])
    return Campaign(**values)


def _contact(row: sqlite3.Row) -> CampaignContact:
    return CampaignContact(
        campaign_id=row["campaign_id"],
        position=row["position"],
        phone=row["phone"],
        name=row["name"],
        context=json.loads(row["context"]),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=parse_ts(row["next_attempt_at"]),
        workflow_run_id=row["workflow_run_id"],
        outcome=row["outcome"],
        updated_at=parse_ts(row["updated_at"]),
    )


class SQLiteCampaigns(SQLiteEvents):
    """Campaigns and their contacts on the SQLite engine (a part of `SQLiteStore`)."""

    # -- helpers --------------------------------------------------------------------------
    def _campaign_events(self, conn: sqlite3.Connection, events: Sequence[CampaignEvent]) -> int:
        queued = 0
        for item in events:
            queued += self._insert_events(conn, [item.event])
            for name in item.inline:
                self._insert_delivery(
                    conn, item.event.seq, name, item.event.workflow_run_id, False, item.event.occurred_at
                )
                queued += 1
        return queued

    @staticmethod
    def _fill(conn: sqlite3.Connection, campaigns: list[Campaign]) -> list[Campaign]:
        if not campaigns:
            return campaigns
        by_id = {c.id: c for c in campaigns}
        marks = ", ".join("?" for _ in by_id)
        for row in conn.execute(
            f"SELECT campaign_id, status, COUNT(*) AS n FROM campaign_contacts WHERE campaign_id IN ({marks})"
            " GROUP BY campaign_id, status",
            tuple(by_id),
        ):
            by_id[row["campaign_id"]].counts[row["status"]] = row["n"]
        for row in conn.execute(
            f"SELECT k.campaign_id, COALESCE(SUM(c.duration), 0) AS seconds FROM campaign_calls k"
            f" JOIN calls c ON c.workflow_run_id = k.workflow_run_id WHERE k.campaign_id IN ({marks})"
            " GROUP BY k.campaign_id",
            tuple(by_id),
        ):
            by_id[row["campaign_id"]].minutes_used = round(row["seconds"] / 60.0, 3)
        return campaigns

    def _load_campaign(self, conn: sqlite3.Connection, campaign_id: str) -> Campaign | None:
        row = conn.execute("SELECT * FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        return None if row is None else self._fill(conn, [_campaign(row)])[0]

    # -- writes ---------------------------------------------------------------------------
    async def create_campaign(
        self, campaign: Campaign, contacts: Sequence[CampaignContact], events: Sequence[CampaignEvent] = ()
    ) -> None:
        def tx(conn: sqlite3.Connection) -> Written[None]:
            values = []
            for name in CAMPAIGN_COLUMNS:
                value = getattr(campaign, name)
                if name == "options":
                    value = _dumps(value)
                elif isinstance(value, datetime):
                    value = ts(value)
                values.append(value)
            conn.execute(
                f"INSERT INTO campaigns ({', '.join(CAMPAIGN_COLUMNS)}) VALUES ({', '.join('?' for _ in values)})",
                values,
            )
            conn.executemany(
                "INSERT INTO campaign_contacts (campaign_id, position, phone, name, context, status, attempts, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                [
                    (campaign.id, c.position, c.phone, c.name, _dumps(c.context), c.status, ts(campaign.created_at))
                    for c in contacts
                ],
            )
            return Written(None, self._campaign_events(conn, events))

        self._notify(await self._write(tx))

    async def claim_campaign_contacts(
        self, campaign_id: str, run_ids: Sequence[str], *, now: datetime
    ) -> list[CampaignContact]:
        def tx(conn: sqlite3.Connection) -> list[CampaignContact]:
            row = conn.execute("SELECT status, dialed, options FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
            if row is None or row["status"] != "running":
                return []
            wanted = len(run_ids)
            max_calls = json.loads(row["options"]).get("max_calls")
            if max_calls:
                wanted = min(wanted, max(0, int(max_calls) - row["dialed"]))
            if wanted <= 0:
                return []
            at = ts(now)
            rows = conn.execute(
                "SELECT * FROM campaign_contacts WHERE campaign_id = ? AND (status = 'pending'"
                " OR (status = 'retry' AND next_attempt_at <= ?)) ORDER BY position LIMIT ?",
                (campaign_id, at, wanted),
            ).fetchall()
            claimed = []
            for contact_row, run_id in zip(rows, run_ids, strict=False):  # fewer rows when fewer are due
                contact = _contact(contact_row)
                contact.status, contact.attempts, contact.workflow_run_id = "dialing", contact.attempts + 1, run_id
                contact.next_attempt_at, contact.updated_at = None, now
                conn.execute(
                    "UPDATE campaign_contacts SET status = 'dialing', attempts = ?, workflow_run_id = ?,"
                    " next_attempt_at = NULL, updated_at = ? WHERE campaign_id = ? AND position = ?",
                    (contact.attempts, run_id, at, campaign_id, contact.position),
                )
                conn.execute(
                    "INSERT INTO campaign_calls (workflow_run_id, campaign_id, position, attempt, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (run_id, campaign_id, contact.position, contact.attempts, at),
                )
                claimed.append(contact)
            if claimed:
                conn.execute(
                    "UPDATE campaigns SET dialed = dialed + ?, updated_at = ? WHERE id = ?",
                    (len(claimed), at, campaign_id),
                )
            return claimed

        return await self._write(tx)

    async def release_campaign_claim(self, contact: CampaignContact, *, now: datetime) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            if load_call(conn, contact.workflow_run_id) is not None:
                return False  # the call was written: it may have been dialed
            changed = conn.execute(
                "UPDATE campaign_contacts SET status = CASE WHEN attempts > 1 THEN 'retry' ELSE 'pending' END,"
                " attempts = attempts - 1, workflow_run_id = NULL, next_attempt_at = CASE WHEN attempts > 1 THEN ? END,"
                " updated_at = ? WHERE campaign_id = ? AND position = ? AND status = 'dialing' AND workflow_run_id = ?",
                (ts(now), ts(now), contact.campaign_id, contact.position, contact.workflow_run_id),
            ).rowcount
            if changed:
                conn.execute("DELETE FROM campaign_calls WHERE workflow_run_id = ?", (contact.workflow_run_id,))
                conn.execute(
                    "UPDATE campaigns SET dialed = dialed - 1, updated_at = ? WHERE id = ?",
                    (ts(now), contact.campaign_id),
                )
            return bool(changed)

        return await self._write(tx)

    async def finish_campaign_attempt(
        self,
        contact: CampaignContact,
        *,
        status: str,
        outcome: str,
        next_attempt_at: datetime | None,
        now: datetime,
        events: Sequence[CampaignEvent] = (),
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> Written[bool]:
            at = ts(now)
            changed = conn.execute(
                "UPDATE campaign_contacts SET status = ?, outcome = ?, next_attempt_at = ?, updated_at = ?"
                " WHERE campaign_id = ? AND position = ? AND status = 'dialing' AND workflow_run_id = ?",
                (
                    status,
                    outcome,
                    ts(next_attempt_at),
                    at,
                    contact.campaign_id,
                    contact.position,
                    contact.workflow_run_id,
                ),
            ).rowcount
            if not changed:
                return Written(False)
            conn.execute(
                "UPDATE campaign_calls SET outcome = ? WHERE workflow_run_id = ?", (outcome, contact.workflow_run_id)
            )
            conn.execute("UPDATE campaigns SET updated_at = ? WHERE id = ?", (at, contact.campaign_id))
            return Written(True, self._campaign_events(conn, events))

        return self._notify(await self._write(tx))

    async def update_campaign(
        self,
        campaign_id: str,
        *,
        from_statuses: Sequence[str],
        status: str,
        now: datetime,
        events: Callable[[Campaign], Sequence[CampaignEvent]] | None = None,
        contacts_from: Sequence[str] = (),
        contacts_to: str | None = None,
        **fields: Any,
    ) -> Campaign | None:
        unknown = set(fields) - CAMPAIGN_UPDATABLE
        if unknown:
            raise StoreError(f"update_campaign: cannot set {', '.join(sorted(unknown))}")

        def tx(conn: sqlite3.Connection) -> Written[Campaign | None]:
            at = ts(now)
            marks = ", ".join("?" for _ in from_statuses)
            sets, params = ["status = ?", "updated_at = ?"], [status, at]
            for name, value in fields.items():
                sets.append(f"{name} = ?")
                params.append(ts(value) if isinstance(value, datetime) else value)
            changed = conn.execute(
                f"UPDATE campaigns SET {', '.join(sets)} WHERE id = ? AND status IN ({marks})",
                (*params, campaign_id, *from_statuses),
            ).rowcount
            if not changed:
                return Written(None)
            if contacts_from and contacts_to:
                cmarks = ", ".join("?" for _ in contacts_from)
                conn.execute(
                    f"UPDATE campaign_contacts SET status = ?, next_attempt_at = NULL, updated_at = ?"
                    f" WHERE campaign_id = ? AND status IN ({cmarks})",
                    (contacts_to, at, campaign_id, *contacts_from),
                )
            campaign = self._load_campaign(conn, campaign_id)
            assert campaign is not None
            return Written(campaign, self._campaign_events(conn, events(campaign) if events else ()))

        return self._notify(await self._write(tx))

    # -- reads ----------------------------------------------------------------------------
    async def get_campaign(self, campaign_id: str) -> Campaign | None:
        return await self._read(lambda conn: self._load_campaign(conn, campaign_id))

    async def list_campaigns(
        self, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Campaign], str | None]:
        limit = clamp_limit(limit)
        sql, params = page_query(
            "SELECT * FROM campaigns",
            [("status", status)],
            keys=("created_at", "id"),
            cursor=cursor,
            limit=limit,
            dialect=SQLITE,
        )

        def query(conn: sqlite3.Connection) -> tuple[list[Campaign], str | None]:
            rows, next_cursor = split_page(conn.execute(sql, params).fetchall(), limit, key="id", dialect=SQLITE)
            return self._fill(conn, [_campaign(row) for row in rows]), next_cursor

        return await self._read(query)

    async def list_campaign_contacts(
        self, campaign_id: str, *, status: str | None = None, limit: int = 100, after: int = -1
    ) -> list[CampaignContact]:
        sql, params = "SELECT * FROM campaign_contacts WHERE campaign_id = ? AND position > ?", [campaign_id, after]
        if status:
            sql += " AND status = ?"
            params.append(status)
        sql += " ORDER BY position LIMIT ?"
        params.append(clamp_limit(limit))
        return await self._read(lambda conn: [_contact(row) for row in conn.execute(sql, params).fetchall()])

    async def active_campaigns(self) -> list[Campaign]:
        def query(conn: sqlite3.Connection) -> list[Campaign]:
            rows = conn.execute(
                "SELECT * FROM campaigns WHERE status IN ('running', 'paused') ORDER BY created_at"
            ).fetchall()
            return self._fill(conn, [_campaign(row) for row in rows])

        return await self._read(query)

    async def campaigns_for_webhooks(self, ids: Sequence[str] = ()) -> list[Campaign]:
        def query(conn: sqlite3.Connection) -> list[Campaign]:
            rows = conn.execute(
                "SELECT * FROM campaigns WHERE status IN ('running', 'paused') OR id IN (SELECT value FROM json_each(?))"
                " OR id IN (SELECT campaign_id FROM campaign_contacts WHERE status = 'dialing')",
                (json.dumps(list(ids)),),
            ).fetchall()
            return [c for c in (_campaign(row) for row in rows) if c.options.get("webhooks")]

        return await self._read(query)

    async def campaign_calls_in_flight(self) -> list[tuple[CampaignContact, CallRecord | None]]:
        def query(conn: sqlite3.Connection) -> list[tuple[CampaignContact, CallRecord | None]]:
            rows = conn.execute(
                "SELECT * FROM campaign_contacts WHERE status = 'dialing' ORDER BY campaign_id, position"
            ).fetchall()
            return [(contact, load_call(conn, contact.workflow_run_id)) for contact in map(_contact, rows)]

        return await self._read(query)


__all__ = ["SQLiteCampaigns"]
