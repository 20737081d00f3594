"""The PostgreSQL outbox: deliveries and their attempts, claims (`FOR UPDATE SKIP LOCKED`) and
leases on the database's clock, finishes, retries and replays, and each endpoint's failure
streak (a part of `PostgresStore`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg

from gateway.events.envelope import Event
from gateway.store.base import (
    AttemptRecord,
    Delivery,
    DeliveryResult,
    DirectDispatch,
    EndpointHealth,
    HealthChange,
    clamp_limit,
    health_changes,
    late_attempt,
    new_lease_id,
    share_out,
)
from gateway.store.paging import POSTGRES, page_query, split_page
from gateway.store.postgres_calls import lock_runs
from gateway.store.postgres_events import PostgresEvents
from gateway.store.postgres_listener import DELIVERIES_CHANNEL
from gateway.store.postgres_pool import Conn
from gateway.store.postgres_rows import (
    UPSERT_CALL,
    delivery_from_row,
    health_from_row,
    record_from_row,
    record_params,
)
from gateway.store.values import DELIVERY_SELECT, DELIVERY_VIEW

_LEASE_FREE = "(lease_until IS NULL OR lease_until < now())"
"""Not leased, on the database's clock: instances whose clocks differ agree on when a lease ends."""
_LEASE = "lease_owner = $1, lease_until = now() + $2 * interval '1 second', lease_id = $3, resend = FALSE"
"""Hand a row out under a new lease ($1 owner, $2 seconds, $3 lease id); a retry asked for before is met by it."""


async def _apply_health_change(conn: Conn, change: HealthChange) -> None:
    if change.reset and not change.failures:
        await conn.execute(
            "UPDATE subscription_health SET consecutive_failures = 0, first_failure_at = NULL"
            " WHERE subscription = $1 AND consecutive_failures > 0",
            change.subscription,
        )
        return
    streak = (
        "excluded.consecutive_failures, first_failure_at = excluded.first_failure_at"
        if change.reset
        else "subscription_health.consecutive_failures + excluded.consecutive_failures,"
        " first_failure_at = COALESCE(subscription_health.first_failure_at, excluded.first_failure_at)"
    )
    await conn.execute(
        "INSERT INTO subscription_health (subscription, consecutive_failures, first_failure_at) VALUES ($1, $2, $3)"
        f" ON CONFLICT (subscription) DO UPDATE SET consecutive_failures = {streak}",
        change.subscription,
        change.failures,
        change.first_failure_at,
    )


async def _queue_again(conn: Conn, delivery_id: str, now: datetime) -> asyncpg.Record | None:
    """A retry or replay of one row: marked to go again after the attempt in flight, if one is
    (its lease held, on the database's clock), else pending and due at `now`, its schedule
    afresh. The row as it is then, or None when there is none."""
    marked = await conn.fetchrow(
        "UPDATE deliveries SET resend = TRUE, updated_at = $1 WHERE id = $2 AND status = 'pending'"
        " AND lease_owner IS NOT NULL AND lease_until >= now() RETURNING *",
        now,
        delivery_id,
    )
    if marked is not None:
        return marked
    return await conn.fetchrow(
        "UPDATE deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL, next_attempt_at = $1,"
        " lease_owner = NULL, lease_until = NULL, lease_id = NULL, resend = FALSE, updated_at = $1 WHERE id = $2"
        " RETURNING *",
        now,
        delivery_id,
    )


class PostgresOutbox(PostgresEvents):
    """Deliveries on the PostgreSQL pool."""

    async def claim_deliveries(
        self, owner: str, *, now: datetime, lease_seconds: float, capacity: Mapping[str, int], limit: int = 200
    ) -> list[Delivery]:
        wanted = {name: min(n, limit) for name, n in capacity.items() if n > 0}
        if not wanted:
            return []
        lease_id = new_lease_id()

        async def tx(conn: Conn) -> list[Delivery]:
            # Each subscription's oldest due rows on their own (a LATERAL per subscription, up to
            # its room), so one subscription's backlog does not fill the window another's rows
            # needed; locked as they are read, skipping rows another instance is claiming (the
            # lease test is re-checked on the locked row versions).
            rows = await conn.fetch(
                "SELECT x.id, w.sub FROM unnest($2::text[], $3::int[]) AS w(sub, n) CROSS JOIN LATERAL ("
                " SELECT d.id, d.next_attempt_at, d.event_seq FROM deliveries d WHERE d.status = 'pending'"
                " AND d.subscription = w.sub AND d.next_attempt_at <= $1"
                " AND (d.lease_until IS NULL OR d.lease_until < now())"
                " AND (d.order_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending'"
                " AND p.subscription = d.subscription AND p.order_key = d.order_key AND p.event_seq < d.event_seq))"
                " ORDER BY d.next_attempt_at, d.event_seq LIMIT w.n FOR UPDATE OF d SKIP LOCKED) x"
                " ORDER BY x.next_attempt_at, x.event_seq",
                now,
                list(wanted),
                list(wanted.values()),
            )
            found: dict[str, list[str]] = {}
            for row in rows:
                found.setdefault(row["sub"], []).append(row["id"])
            ids = share_out(found, limit)
            if not ids:
                return []
            await conn.execute(
                f"UPDATE deliveries SET {_LEASE} WHERE id = ANY($4::text[])", owner, lease_seconds, lease_id, ids
            )
            claimed = await conn.fetch(
                DELIVERY_SELECT + " WHERE d.id = ANY($1::text[]) ORDER BY d.next_attempt_at, d.event_seq", ids
            )
            return [delivery_from_row(r, with_event=True) for r in claimed]

        return await self._tx(tx)

    async def finish_deliveries(
        self, owner: str, items: Sequence[tuple[Delivery, DeliveryResult]]
    ) -> list[EndpointHealth | None]:
        if not items:
            return []
        dispatch = self.dispatch if self.dispatch is not None and self.dispatch.owner == owner else None

        async def tx(conn: Conn) -> list[EndpointHealth | None]:
            unique: dict[str, tuple[int, Delivery, DeliveryResult]] = {}  # by attempt id, its first item
            for index, (delivery, result) in enumerate(items):
                unique.setdefault(result.attempt.id, (index, delivery, result))
            # Every row moves only under the lease it was sent under, and only for an attempt not
            # recorded yet; sorted, so that batches touching the same rows lock them in one order.
            todo = sorted(unique.values(), key=lambda item: item[1].id)
            rows = await conn.fetch(
                "WITH done AS (SELECT attempt_id FROM delivery_attempts WHERE attempt_id = ANY($9::text[])),"
                " moved AS (UPDATE deliveries d SET status = CASE WHEN d.resend THEN 'pending' ELSE v.status END,"
                " attempts = CASE WHEN d.resend THEN 0 ELSE d.attempts + 1 END,"
                " next_attempt_at = CASE WHEN d.resend THEN now() ELSE COALESCE(v.next_at, d.next_attempt_at) END,"
                " first_attempt_at = CASE WHEN d.resend THEN NULL ELSE COALESCE(d.first_attempt_at, v.at) END,"
                " resend = FALSE, lease_owner = NULL, lease_until = NULL, lease_id = NULL,"
                " last_attempt_at = v.at, last_status = v.last_status, last_error = v.last_error, updated_at = v.at"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::int[], $7::text[],"
                " $9::text[]) AS v(id, lease_id, status, next_at, at, last_status, last_error, attempt_id)"
                " WHERE d.id = v.id AND d.status = 'pending' AND d.lease_owner = $8 AND d.lease_id = v.lease_id"
                " AND v.attempt_id NOT IN (SELECT attempt_id FROM done) RETURNING d.id, d.status)"
                " SELECT NULL AS id, attempt_id, NULL AS status FROM done UNION ALL SELECT id, NULL, status FROM moved",
                [d.id for _, d, _ in todo],
                [d.lease_id for _, d, _ in todo],
                [r.status for _, _, r in todo],
                [r.next_attempt_at for _, _, r in todo],
                [r.attempt.attempted_at for _, _, r in todo],
                [r.attempt.status for _, _, r in todo],
                [r.attempt.error for _, _, r in todo],
                owner,
                [r.attempt.id for _, _, r in todo],
            )
            recorded = {row["attempt_id"] for row in rows if row["attempt_id"] is not None}
            status = {row["id"]: row["status"] for row in rows if row["id"] is not None}
            # not recorded before (a batch written again after its answer was lost: once is enough)
            fresh = {attempt_id: item for attempt_id, item in unique.items() if attempt_id not in recorded}
            late = {index for index, delivery, _ in fresh.values() if delivery.id not in status}
            await conn.executemany(
                "INSERT INTO delivery_attempts (delivery_id, attempt_id, attempted_at, outcome, status, latency_ms, error,"
                " response, request) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (attempt_id) DO NOTHING",
                [
                    (d.id, a.id, a.attempted_at, a.outcome, a.status, a.latency_ms, a.error, a.response, a.request)
                    for index, d, r in fresh.values()
                    for a in [late_attempt(r.attempt) if index in late else r.attempt]
                ],
            )
            moved = [
                (d, r if status[d.id] == r.status else replace(r, status=status[d.id]))
                for _, d, r in sorted(fresh.values(), key=lambda item: item[0])
                if d.id in status
            ]
            mapped = [(d, r) for d, r in moved if r.gathered_context and d.workflow_run_id]
            if mapped:  # response mapping into the calls: one query for them, one statement for all
                calls = {
                    row["workflow_run_id"]: record_from_row(row)
                    for row in await conn.fetch(
                        "SELECT * FROM calls WHERE workflow_run_id = ANY($1::text[]) ORDER BY workflow_run_id FOR UPDATE",
                        sorted({d.workflow_run_id for d, _ in mapped if d.workflow_run_id}),
                    )
                }
                for delivery, result in mapped:
                    record = calls.get(delivery.workflow_run_id or "")
                    if record is not None:
                        record.gathered_context.update(result.gathered_context or {})
                        record.updated_at = result.attempt.attempted_at
                await conn.executemany(UPSERT_CALL, [record_params(record) for record in calls.values()])
            for change in health_changes(moved):
                await _apply_health_change(conn, change)
            rows = await conn.fetch(
                "SELECT * FROM subscription_health WHERE subscription = ANY($1::text[])",
                list({d.subscription for d, _ in items}),
            )
            health = {row["subscription"]: health_from_row(row) for row in rows}
            if await self._next_in_order(conn, moved, dispatch, leased):
                await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")  # a call's next event is due for a claim
            return [
                None if index in late else health.get(d.subscription) or EndpointHealth(d.subscription)
                for index, (d, _) in enumerate(items)
            ]

        leased: list[Delivery] = []
        healths = await self._tx(tx)
        self._handover(leased)
        return healths

    async def _next_in_order(
        self,
        conn: Conn,
        items: Sequence[tuple[Delivery, DeliveryResult]],
        dispatch: DirectDispatch | None,
        leased: list[Delivery],
    ) -> int:
        """The call's next pending delivery after each ordered one that reached its end: leased
        to `dispatch` when it is due, free and taken (added to `leased`); returns how many
        others are due for a claim. One query finds them all, one statement leases them."""
        ended = list(
            dict.fromkeys(
                (d.subscription, d.order_key) for d, r in items if r.status != "pending" and d.order_key is not None
            )
        )
        if not ended:
            return 0
        now = self.now()
        rows = await conn.fetch(
            DELIVERY_SELECT.replace(
                "SELECT d.*", f"SELECT DISTINCT ON (d.subscription, d.order_key) d.*, {_LEASE_FREE} AS lease_free", 1
            )
            + " JOIN unnest($1::text[], $2::text[]) AS w(sub, key) ON d.subscription = w.sub AND d.order_key = w.key"
            " WHERE d.status = 'pending' ORDER BY d.subscription, d.order_key, d.event_seq",
            [sub for sub, _ in ended],
            [key for _, key in ended],
        )
        first = {(row["subscription"], row["order_key"]): row for row in rows}
        queued = 0
        taken: dict[str, int] = defaultdict(int)
        offered: list[Delivery] = []
        for pair in ended:
            row = first.get(pair)
            if row is None or row["next_attempt_at"] > now or not row["lease_free"]:
                continue  # nothing waits, or it is not due yet (a claim or the poll takes it then)
            if dispatch is not None and dispatch.room(pair[0]) > taken[pair[0]]:
                taken[pair[0]] += 1
                offered.append(delivery_from_row(row, with_event=True))
            else:
                queued += 1
        if offered:
            assert dispatch is not None
            lease_id = new_lease_id()
            # The lease test again on the rows as they are now: another instance may be claiming one.
            got = {
                row["id"]
                for row in await conn.fetch(
                    f"UPDATE deliveries SET {_LEASE} WHERE id = ANY($4::text[]) AND status = 'pending' AND {_LEASE_FREE}"
                    " RETURNING id",
                    dispatch.owner,
                    dispatch.lease_seconds,
                    lease_id,
                    [d.id for d in offered],
                )
            }
            for successor in offered:
                if successor.id in got:
                    successor.lease_id = lease_id
                    leased.append(successor)
        return queued

    async def release_leases(self, owner: str, delivery_ids: Sequence[str] | None = None) -> int:
        async def tx(conn: Conn) -> int:
            sql = "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, lease_id = NULL WHERE lease_owner = $1"
            if delivery_ids is None:
                status = await conn.execute(sql, owner)
            else:
                status = await conn.execute(sql + " AND id = ANY($2::text[])", owner, list(delivery_ids))
            return int(status.split()[-1])

        return await self._tx(tx)

    async def list_deliveries(
        self,
        *,
        status: str | None = None,
        subscription: str | None = None,
        run_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Delivery], str | None]:
        limit = clamp_limit(limit)
        sql, params = page_query(
            DELIVERY_VIEW,
            [("d.status", status), ("d.subscription", subscription), ("d.workflow_run_id", run_id)],
            keys=("d.created_at", "d.id"),
            cursor=cursor,
            limit=limit,
            dialect=POSTGRES,
        )

        async def query(conn: Conn) -> tuple[list[Delivery], str | None]:
            rows, next_cursor = split_page(await conn.fetch(sql, *params), limit, key="id", dialect=POSTGRES)
            return [delivery_from_row(r, with_event=True) for r in rows], next_cursor

        return await self._query(query)

    async def get_delivery(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        async def query(conn: Conn) -> tuple[Delivery, list[AttemptRecord]] | None:
            row = await conn.fetchrow(DELIVERY_VIEW + " WHERE d.id = $1", delivery_id)
            if row is None:
                return None
            attempts = [
                AttemptRecord(
                    attempted_at=a["attempted_at"],
                    outcome=a["outcome"],
                    status=a["status"],
                    latency_ms=a["latency_ms"],
                    error=a["error"],
                    response=a["response"],
                    request=a["request"],
                )
                for a in await conn.fetch(
                    "SELECT * FROM delivery_attempts WHERE delivery_id = $1 ORDER BY id", delivery_id
                )
            ]
            return delivery_from_row(row, with_event=True), attempts

        return await self._query(query)

    async def retry_delivery(self, delivery_id: str, *, now: datetime) -> Delivery | None:
        async def tx(conn: Conn) -> Delivery | None:
            row = await _queue_again(conn, delivery_id, now)
            if row is not None:
                await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
            return None if row is None else delivery_from_row(row)

        return await self._tx(tx)

    async def replay_deliveries(
        self,
        subscription: str,
        *,
        since: datetime,
        until: datetime,
        now: datetime,
        matches: Callable[[str], bool],
        ordered: bool,
    ) -> int:
        async def tx(conn: Conn) -> int:
            # The calls' run locks first, as their callbacks take them: a callback writing a newer
            # event of one of these calls waits for the replayed rows, so an ordered subscription
            # queues it after them. Sorted, so two replays cannot deadlock.
            runs = await conn.fetch(
                "SELECT DISTINCT workflow_run_id FROM events WHERE occurred_at >= $1 AND occurred_at < $2"
                " AND workflow_run_id IS NOT NULL",
                since,
                until,
            )
            await lock_runs(conn, [r["workflow_run_id"] for r in runs])
            rows = await conn.fetch(
                "SELECT e.seq, e.type, e.workflow_run_id, d.id AS delivery_id FROM events e"
                " LEFT JOIN deliveries d ON d.event_seq = e.seq AND d.subscription = $1"
                " WHERE e.occurred_at >= $2 AND e.occurred_at < $3 ORDER BY e.seq",
                subscription,
                since,
                until,
            )
            count = 0
            for row in rows:
                if row["delivery_id"] is not None:
                    await _queue_again(conn, row["delivery_id"], now)
                    count += 1
                elif matches(row["type"]):
                    await self._insert_delivery(conn, row["seq"], subscription, row["workflow_run_id"], ordered, now)
                    count += 1
            if count:
                await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
            return count

        return await self._tx(tx)

    async def endpoint_health(self) -> dict[str, EndpointHealth]:
        async def query(conn: Conn) -> dict[str, EndpointHealth]:
            return {
                r["subscription"]: health_from_row(r) for r in await conn.fetch("SELECT * FROM subscription_health")
            }

        return await self._query(query)

    async def set_endpoint_disabled(self, subscription: str, *, reason: str | None, now: datetime) -> list[Event]:
        async def tx(conn: Conn) -> list[Event]:
            await conn.execute(
                "INSERT INTO subscription_health (subscription, consecutive_failures, disabled_at, disabled_reason)"
                " VALUES ($1, 0, $2, $3) ON CONFLICT (subscription) DO UPDATE SET disabled_at = excluded.disabled_at,"
                " disabled_reason = excluded.disabled_reason"
                + (", consecutive_failures = 0, first_failure_at = NULL" if reason is None else ""),
                subscription,
                now if reason else None,
                reason,
            )
            if reason is None:
                await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
                return []
            event = Event(
                type="webhook.endpoint_disabled",
                workflow_run_id=None,
                occurred_at=now,
                data={"subscription": subscription, "reason": reason},
            )
            await self._insert_events(conn, [event])
            return [event]

        return await self._tx(tx)

    async def pending_subscriptions(self) -> set[str]:
        rows = await self._query(
            lambda conn: conn.fetch("SELECT DISTINCT subscription FROM deliveries WHERE status = 'pending'")
        )
        return {row["subscription"] for row in rows}

    async def outbox_stats(self, *, now: datetime) -> dict[str, Any]:
        row = await self._query(
            lambda conn: conn.fetchrow(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries WHERE status = 'pending'"
            )
        )
        assert row is not None  # an aggregate always has its row
        oldest = row["oldest"]
        return {"pending": row["n"], "oldest_pending_seconds": (now - oldest).total_seconds() if oldest else 0.0}
