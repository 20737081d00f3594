"""The PostgreSQL side of campaigns: a mixin for `PostgresStore`, with the semantics of
`SQLiteCampaigns`. Every change runs in one transaction with the events it causes and their
delivery rows (configured subscriptions and the campaign's inline ones alike).

Several gateway instances share the database, so writers lock in one order: the campaign row
first (`FOR NO KEY UPDATE`), then its contact rows. Claims take due contacts with
`FOR UPDATE SKIP LOCKED`, so two instances never claim the same contact, and the locked
campaign row keeps `dialed` (and so `max_calls`) exact. Finishes and releases are guarded on
the contact still dialing that run, so each happens once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from gateway.calls.record import CallRecord
from gateway.store.base import StoreError, clamp_limit
from gateway.store.campaigns import CAMPAIGN_COLUMNS, CAMPAIGN_UPDATABLE, Campaign, CampaignContact, CampaignEvent
from gateway.store.paging import POSTGRES, page_query, split_page
from gateway.store.postgres_calls import load_call
from gateway.store.postgres_events import PostgresEvents
from gateway.store.postgres_listener import DELIVERIES_CHANNEL
from gateway.store.postgres_pool import Conn

_INSERT_CAMPAIGN = (
    f"INSERT INTO campaigns ({', '.join(CAMPAIGN_COLUMNS)})"
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(CAMPAIGN_COLUMNS) + 1))})"
)


def _campaign(row: asyncpg.Record) -> Campaign:
    values = {name: row[name] for name in CAMPAIGN_COLUMNS}
    values["options"] = dict(values["options"] or {})
    return Campaign(**values)


def _contact(row: asyncpg.Record) -> CampaignContact:
    return CampaignContact(
        campaign_id=row["campaign_id"],
        position=row["position"],
        phone=row["phone"],
        name=row["name"],
        context=dict(row["context"] or {}),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        workflow_run_id=row["workflow_run_id"],
        outcome=row["outcome"],
        updated_at=row["updated_at"],
    )


def _count(status: str) -> int:
    """Rows an UPDATE/DELETE command tag reports ("UPDATE 3")."""
    return int(status.split()[-1])


class PostgresCampaigns(PostgresEvents):
    """Campaigns and their contacts on the PostgreSQL pool (a part of `PostgresStore`)."""

    # -- helpers --------------------------------------------------------------------------
    async def _campaign_events(self, conn: Conn, events: Sequence[CampaignEvent]) -> int:
        queued = inline = 0
        for item in events:
            queued += await self._insert_events(conn, [item.event])  # NOTIFYs for configured deliveries
            for name in item.inline:
                await self._insert_delivery(
                    conn, item.event.seq, name, item.event.workflow_run_id, False, item.event.occurred_at
                )
                inline += 1
        if inline:
            await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
        return queued + inline

    @staticmethod
    async def _fill(conn: Conn, campaigns: list[Campaign]) -> list[Campaign]:
        if not campaigns:
            return campaigns
        by_id = {c.id: c for c in campaigns}
        ids = list(by_id)
        for row in await conn.fetch(
            "SELECT campaign_id, status, COUNT(*) AS n FROM campaign_contacts WHERE campaign_id = ANY($1::text[])"
            " GROUP BY campaign_id, status",
            ids,
        ):
            by_id[row["campaign_id"]].counts[row["status"]] = row["n"]
        for row in await conn.fetch(
            "SELECT k.campaign_id, COALESCE(SUM(c.duration), 0) AS seconds FROM campaign_calls k"
            " JOIN calls c ON c.workflow_run_id = k.workflow_run_id WHERE k.campaign_id = ANY($1::text[])"
            " GROUP BY k.campaign_id",
            ids,
        ):
            by_id[row["campaign_id"]].minutes_used = round(float(row["seconds"]) / 60.0, 3)
        return campaigns

    async def _load_campaign(self, conn: Conn, campaign_id: str) -> Campaign | None:
        row = await conn.fetchrow("SELECT * FROM campaigns WHERE id = $1", campaign_id)
        return None if row is None else (await self._fill(conn, [_campaign(row)]))[0]

    @staticmethod
    async def _lock_campaign(conn: Conn, campaign_id: str) -> asyncpg.Record | None:
        """Lock the campaign row first: every campaign writer takes this lock before contact rows."""
        return await conn.fetchrow(
            "SELECT status, dialed, options FROM campaigns WHERE id = $1 FOR NO KEY UPDATE", campaign_id
        )

    # -- writes ---------------------------------------------------------------------------
    async def create_campaign(
        self, campaign: Campaign, contacts: Sequence[CampaignContact], events: Sequence[CampaignEvent] = ()
    ) -> None:
        async def tx(conn: Conn) -> None:
            await conn.execute(_INSERT_CAMPAIGN, *[getattr(campaign, name) for name in CAMPAIGN_COLUMNS])
            if contacts:
                await conn.executemany(
                    "INSERT INTO campaign_contacts (campaign_id, position, phone, name, context, status, attempts, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
                    [
                        (campaign.id, c.position, c.phone, c.name, c.context, c.status, campaign.created_at)
                        for c in contacts
                    ],
                )
            await self._campaign_events(conn, events)

        await self._tx(tx)

    async def claim_campaign_contacts(
        self, campaign_id: str, run_ids: Sequence[str], *, now: datetime
    ) -> list[CampaignContact]:
        async def tx(conn: Conn) -> list[CampaignContact]:
            row = await self._lock_campaign(conn, campaign_id)
            if row is None or row["status"] != "running":
                return []
            wanted = len(run_ids)
            max_calls = (row["options"] or {}).get("max_calls")
            if max_calls:
                wanted = min(wanted, max(0, int(max_calls) - row["dialed"]))
            if wanted <= 0:
                return []
            rows = await conn.fetch(
                "SELECT * FROM campaign_contacts WHERE campaign_id = $1 AND (status = 'pending'"
                " OR (status = 'retry' AND next_attempt_at <= $2)) ORDER BY position LIMIT $3"
                " FOR UPDATE SKIP LOCKED",
                campaign_id,
                now,
                wanted,
            )
            claimed = []
            for contact_row, run_id in zip(rows, run_ids, strict=False):  # fewer rows when fewer are due
                contact = _contact(contact_row)
                contact.status, contact.attempts, contact.workflow_run_id = "dialing", contact.attempts + 1, run_id
                contact.next_attempt_at, contact.updated_at = None, now
                claimed.append(contact)
            if not claimed:
                return []
            await conn.executemany(
                "UPDATE campaign_contacts SET status = 'dialing', attempts = $1, workflow_run_id = $2,"
                " next_attempt_at = NULL, updated_at = $3 WHERE campaign_id = $4 AND position = $5",
                [(c.attempts, c.workflow_run_id, now, campaign_id, c.position) for c in claimed],
            )
            await conn.executemany(
                "INSERT INTO campaign_calls (workflow_run_id, campaign_id, position, attempt, created_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                [(c.workflow_run_id, campaign_id, c.position, c.attempts, now) for c in claimed],
            )
            await conn.execute(
                "UPDATE campaigns SET dialed = dialed + $1, updated_at = $2 WHERE id = $3",
                len(claimed),
                now,
                campaign_id,
            )
            return claimed

        return await self._tx(tx)

    async def release_campaign_claim(self, contact: CampaignContact, *, now: datetime) -> bool:
        async def tx(conn: Conn) -> bool:
            if contact.workflow_run_id is None:
                return False
            await self._lock_campaign(conn, contact.campaign_id)
            # Serialize with every writer of this call (as `apply_update` does) before asking
            # whether it was written.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"run:{contact.workflow_run_id}")
            if await load_call(conn, contact.workflow_run_id) is not None:
                return False  # the call was written: it may have been dialed
            changed = _count(
                await conn.execute(
                    "UPDATE campaign_contacts SET status = CASE WHEN attempts > 1 THEN 'retry' ELSE 'pending' END,"
                    " attempts = attempts - 1, workflow_run_id = NULL,"
                    " next_attempt_at = CASE WHEN attempts > 1 THEN $1::timestamptz END, updated_at = $1"
                    " WHERE campaign_id = $2 AND position = $3 AND status = 'dialing' AND workflow_run_id = $4",
                    now,
                    contact.campaign_id,
                    contact.position,
                    contact.workflow_run_id,
                )
            )
            if changed:
                await conn.execute("DELETE FROM campaign_calls WHERE workflow_run_id = $1", contact.workflow_run_id)
                await conn.execute(
                    "UPDATE campaigns SET dialed = dialed - 1, updated_at = $1 WHERE id = $2", now, contact.campaign_id
                )
            return bool(changed)

        return await self._tx(tx)

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
        async def tx(conn: Conn) -> bool:
            await self._lock_campaign(conn, contact.campaign_id)
            changed = _count(
                await conn.execute(
                    "UPDATE campaign_contacts SET status = $1, outcome = $2, next_attempt_at = $3, updated_at = $4"
                    " WHERE campaign_id = $5 AND position = $6 AND status = 'dialing' AND workflow_run_id = $7",
                    status,
                    outcome,
                    next_attempt_at,
                    now,
                    contact.campaign_id,
                    contact.position,
                    contact.workflow_run_id,
                )
            )
            if not changed:
                return False
            await conn.execute(
                "UPDATE campaign_calls SET outcome = $1 WHERE workflow_run_id = $2", outcome, contact.workflow_run_id
            )
            await conn.execute("UPDATE campaigns SET updated_at = $1 WHERE id = $2", now, contact.campaign_id)
            await self._campaign_events(conn, events)
            return True

        return await self._tx(tx)

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

        async def tx(conn: Conn) -> Campaign | None:
            sets, params = ["status = $1", "updated_at = $2"], [status, now]
            for name, value in fields.items():
                params.append(value)
                sets.append(f"{name} = ${len(params)}")
            params += [campaign_id, list(from_statuses)]
            changed = _count(
                await conn.execute(
                    f"UPDATE campaigns SET {', '.join(sets)} WHERE id = ${len(params) - 1} AND status = ANY(${len(params)}::text[])",
                    *params,
                )
            )
            if not changed:
                return None
            if contacts_from and contacts_to:
                await conn.execute(
                    "UPDATE campaign_contacts SET status = $1, next_attempt_at = NULL, updated_at = $2"
                    " WHERE campaign_id = $3 AND status = ANY($4::text[])",
                    contacts_to,
                    now,
                    campaign_id,
                    list(contacts_from),
                )
            campaign = await self._load_campaign(conn, campaign_id)
            assert campaign is not None
            await self._campaign_events(conn, events(campaign) if events else ())
            return campaign

        return await self._tx(tx)

    # -- reads ----------------------------------------------------------------------------
    async def get_campaign(self, campaign_id: str) -> Campaign | None:
        return await self._query(lambda conn: self._load_campaign(conn, campaign_id))

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
            dialect=POSTGRES,
        )

        async def query(conn: Conn) -> tuple[list[Campaign], str | None]:
            rows, next_cursor = split_page(await conn.fetch(sql, *params), limit, key="id", dialect=POSTGRES)
            return await self._fill(conn, [_campaign(row) for row in rows]), next_cursor

        return await self._query(query)

    async def list_campaign_contacts(
        self, campaign_id: str, *, status: str | None = None, limit: int = 100, after: int = -1
    ) -> list[CampaignContact]:
        sql, params = (
            "SELECT * FROM campaign_contacts WHERE campaign_id = $1 AND position > $2",
            [campaign_id, int(after)],
        )
        if status:
            params.append(status)
            sql += f" AND status = ${len(params)}"
        params.append(clamp_limit(limit))
        sql += f" ORDER BY position LIMIT ${len(params)}"

        async def query(conn: Conn) -> list[CampaignContact]:
            return [_contact(row) for row in await conn.fetch(sql, *params)]

        return await self._query(query)

    async def active_campaigns(self) -> list[Campaign]:
        async def query(conn: Conn) -> list[Campaign]:
            rows = await conn.fetch(
                "SELECT * FROM campaigns WHERE status IN ('running', 'paused') ORDER BY created_at, id"
            )
            return await self._fill(conn, [_campaign(row) for row in rows])

        return await self._query(query)

    async def campaigns_for_webhooks(self, ids: Sequence[str] = ()) -> list[Campaign]:
        async def query(conn: Conn) -> list[Campaign]:
            rows = await conn.fetch(
                "SELECT * FROM campaigns WHERE status IN ('running', 'paused') OR id = ANY($1::text[])"
                " OR id IN (SELECT campaign_id FROM campaign_contacts WHERE status = 'dialing')",
                list(ids),
            )
            return [c for c in (_campaign(row) for row in rows) if c.options.get("webhooks")]

        return await self._query(query)

    async def campaign_calls_in_flight(self) -> list[tuple[CampaignContact, CallRecord | None]]:
        async def query(conn: Conn) -> list[tuple[CampaignContact, CallRecord | None]]:
            rows = await conn.fetch(
                "SELECT * FROM campaign_contacts WHERE status = 'dialing' ORDER BY campaign_id, position"
            )
            out = []
            for contact in map(_contact, rows):
                out.append((contact, await load_call(conn, contact.workflow_run_id)))
            return out

        return await self._query(query)


__all__ = ["PostgresCampaigns"]
