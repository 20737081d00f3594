"""The SQLite outbox: deliveries and their attempts, claims and leases, finishes, retries and
replays, and each endpoint's failure streak (a part of `SQLiteStore`). Every hot transaction
here is also a `*_tx` the writer process runs (`gateway.store.writer_process`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

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
from gateway.store.paging import SQLITE, page_query, split_page
from gateway.store.sqlite_calls import load_call
from gateway.store.sqlite_events import Fanned, SQLiteEvents, WriteTx, Written
from gateway.store.sqlite_rows import (
    INSERT_ATTEMPT,
    UPSERT_CALL,
    attempt_from_row,
    attempt_params,
    delivery_from_row,
    health_from_row,
    parse_ts,
    record_params,
    ts,
)
from gateway.store.values import DELIVERY_COLUMNS, DELIVERY_SELECT, DELIVERY_VIEW

_LEASE = "lease_owner = ?, lease_until = ?, lease_id = ?, resend = 0"
"""Hand a row out under a new lease (owner, until, id); a retry asked for before is met by it."""

_MARK_RESEND = (
    "UPDATE deliveries SET resend = 1, updated_at = ? WHERE id = ? AND status = 'pending'"
    " AND lease_owner IS NOT NULL AND lease_until >= ?"
)
"""A retry or replay of a row whose attempt is in flight: (updated at, id, the store's now)."""

_RESET = (
    "UPDATE deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL, next_attempt_at = ?,"
    " lease_owner = NULL, lease_until = NULL, lease_id = NULL, resend = 0, updated_at = ? WHERE id = ?"
)
"""A retry or replay of a row not in flight: due at once, its schedule afresh (due at, updated at, id)."""


class SQLiteOutbox(SQLiteEvents):
    """Deliveries on the SQLite engine."""

    async def claim_deliveries(
        self, owner: str, *, now: datetime, lease_seconds: float, capacity: Mapping[str, int], limit: int = 200
    ) -> list[Delivery]:
        if not any(n > 0 for n in capacity.values()):
            return []
        return self._notify(
            await self._write(
                self.claim_deliveries_tx(owner, now=now, lease_seconds=lease_seconds, capacity=capacity, limit=limit)
            )
        )

    def claim_deliveries_tx(
        self,
        owner: str,
        *,
        now: datetime,
        lease_seconds: float,
        capacity: Mapping[str, int],
        limit: int = 200,
        lease_id: str | None = None,
    ) -> WriteTx[list[Delivery]]:
        """`claim_deliveries`'s transaction: (the claimed deliveries, 0, [])."""
        wanted = {name: n for name, n in capacity.items() if n > 0}
        due = ts(now)
        lease_id = lease_id or new_lease_id()

        def tx(conn: sqlite3.Connection) -> Written[list[Delivery]]:
            clock = self.now()  # leases run on the store's clock, whatever the caller's says
            at, until = ts(clock), ts(clock + timedelta(seconds=lease_seconds))
            found: dict[str, list[sqlite3.Row]] = {}
            for subscription, n in wanted.items():
                # Walk the due index in time order and stop at `room` rows: the cost follows
                # what is claimed (plus rows leased or waiting behind an earlier event of the
                # same call), not the size of the backlog. Equal times keep insertion order.
                found[subscription] = conn.execute(
                    DELIVERY_COLUMNS + " FROM deliveries d INDEXED BY deliveries_due"
                    " JOIN events e ON e.seq = d.event_seq"
                    " WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until < ?)"
                    " AND d.subscription = ?"
                    " AND (d.order_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending'"
                    " AND p.subscription = d.subscription AND p.order_key = d.order_key AND p.event_seq < d.event_seq))"
                    " ORDER BY d.next_attempt_at LIMIT ?",
                    (due, at, subscription, min(n, limit)),
                ).fetchall()
            picked = share_out(found, limit)
            conn.executemany(
                f"UPDATE deliveries SET {_LEASE} WHERE id = ?", [(owner, until, lease_id, row["id"]) for row in picked]
            )
            claimed = [delivery_from_row(row, with_event=True) for row in picked]
            for delivery in claimed:
                delivery.lease_id = lease_id
            return Written(claimed)

        return tx

    async def finish_deliveries(
        self, owner: str, items: Sequence[tuple[Delivery, DeliveryResult]]
    ) -> list[EndpointHealth | None]:
        if not items:
            return []
        return self._notify(await self._write(self.finish_deliveries_tx(owner, items)))

    def finish_deliveries_tx(
        self, owner: str, items: Sequence[tuple[Delivery, DeliveryResult]], lease_id: str | None = None
    ) -> WriteTx[list[EndpointHealth | None]]:
        """`finish_deliveries`'s transaction: (healths, successors queued, successors leased
        under `lease_id`)."""
        dispatch = self.dispatch if self.dispatch is not None and self.dispatch.owner == owner else None
        lease_id = lease_id or new_lease_id()

        def tx(conn: sqlite3.Connection) -> Written[list[EndpointHealth | None]]:
            now = ts(self.now())
            recorded = _recorded_attempts(conn, [result.attempt.id for _, result in items])
            attempts: list[tuple[Any, ...]] = []
            moved: list[tuple[Delivery, DeliveryResult]] = []  # finished under their lease, with the status they took
            late: set[int] = set()
            for index, (delivery, result) in enumerate(items):
                attempt = result.attempt
                if attempt.id in recorded:
                    continue  # written before (its batch's answer was lost): once is enough
                recorded.add(attempt.id)
                at = ts(attempt.attempted_at)
                row = conn.execute(
                    "UPDATE deliveries SET status = CASE WHEN resend THEN 'pending' ELSE ? END,"
                    " attempts = CASE WHEN resend THEN 0 ELSE attempts + 1 END,"
                    " next_attempt_at = CASE WHEN resend THEN ? ELSE COALESCE(?, next_attempt_at) END,"
                    " first_attempt_at = CASE WHEN resend THEN NULL ELSE COALESCE(first_attempt_at, ?) END,"
                    " resend = 0, lease_owner = NULL, lease_until = NULL, lease_id = NULL,"
                    " last_attempt_at = ?, last_status = ?, last_error = ?, updated_at = ?"
                    " WHERE id = ? AND status = 'pending' AND lease_owner = ? AND lease_id = ? RETURNING status",
                    (
                        result.status,
                        now,
                        ts(result.next_attempt_at),
                        at,
                        at,
                        attempt.status,
                        attempt.error,
                        at,
                        delivery.id,
                        owner,
                        delivery.lease_id,
                    ),
                ).fetchone()
                if row is None:
                    late.add(index)
                    attempt = late_attempt(attempt)
                else:
                    moved.append((delivery, result if row[0] == result.status else replace(result, status=row[0])))
                attempts.append(attempt_params(delivery.id, attempt))
            conn.executemany(INSERT_ATTEMPT, attempts)
            for delivery, result in moved:
                if result.gathered_context and delivery.workflow_run_id:
                    record = load_call(conn, delivery.workflow_run_id)
                    if record is not None:
                        record.gathered_context.update(result.gathered_context)
                        record.updated_at = result.attempt.attempted_at
                        conn.execute(UPSERT_CALL, record_params(record))
            for change in health_changes(moved):
                _apply_health_change(conn, change)
            health = {
                name: health_from_row(row)
                if (row := conn.execute("SELECT * FROM subscription_health WHERE subscription = ?", (name,)).fetchone())
                else EndpointHealth(name)
                for name in {delivery.subscription for delivery, _ in items}
            }
            queued, leased = self._next_in_order(conn, moved, dispatch, lease_id)
            return Written(
                [None if index in late else health[delivery.subscription] for index, (delivery, _) in enumerate(items)],
                queued,
                leased,
            )

        return tx

    def _next_in_order(
        self,
        conn: sqlite3.Connection,
        items: Sequence[tuple[Delivery, DeliveryResult]],
        dispatch: DirectDispatch | None,
        lease_id: str,
    ) -> Fanned:
        """The call's next pending delivery after each ordered one that reached its end: leased
        to `dispatch` (under `lease_id`) when it is due, free and taken; else counted, so that
        claimers wake."""
        queued, leased = 0, []
        now = self.now()
        at = ts(now)
        for delivery, result in items:
            if result.status == "pending" or delivery.order_key is None:
                continue
            row = conn.execute(
                DELIVERY_SELECT + " WHERE d.status = 'pending' AND d.subscription = ? AND d.order_key = ?"
                " ORDER BY d.event_seq LIMIT 1",
                (delivery.subscription, delivery.order_key),
            ).fetchone()
            if (
                row is None
                or row["next_attempt_at"] > at
                or (row["lease_until"] is not None and row["lease_until"] >= at)
            ):
                continue  # nothing waits, or it is not due yet (a claim or the poll takes it then)
            if dispatch is not None and self._has_room(dispatch, delivery.subscription):
                self._leases[delivery.subscription] = self._leases.get(delivery.subscription, 0) + 1
                conn.execute(
                    f"UPDATE deliveries SET {_LEASE} WHERE id = ?",
                    (dispatch.owner, ts(now + timedelta(seconds=dispatch.lease_seconds)), lease_id, row["id"]),
                )
                successor = delivery_from_row(row, with_event=True)
                successor.lease_id = lease_id
                leased.append(successor)
            else:
                queued += 1
        return Fanned(queued, leased)

    async def release_leases(self, owner: str, delivery_ids: Sequence[str] | None = None) -> int:
        return self._notify(await self._write(self.release_leases_tx(owner, delivery_ids)))

    def release_leases_tx(self, owner: str, delivery_ids: Sequence[str] | None = None) -> WriteTx[int]:
        """`release_leases`'s transaction: how many it released."""

        def tx(conn: sqlite3.Connection) -> Written[int]:
            sql = "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, lease_id = NULL WHERE lease_owner = ?"
            if delivery_ids is None:
                return Written(conn.execute(sql, (owner,)).rowcount)
            if not delivery_ids:
                return Written(0)
            marks = ",".join("?" * len(delivery_ids))
            return Written(conn.execute(sql + f" AND id IN ({marks})", (owner, *delivery_ids)).rowcount)

        return tx

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
            dialect=SQLITE,
        )

        def query(conn: sqlite3.Connection) -> tuple[list[Delivery], str | None]:
            rows, next_cursor = split_page(conn.execute(sql, params).fetchall(), limit, key="id", dialect=SQLITE)
            return [delivery_from_row(row, with_event=True) for row in rows], next_cursor

        return await self._read(query)

    async def get_delivery(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        def query(conn: sqlite3.Connection) -> tuple[Delivery, list[AttemptRecord]] | None:
            row = conn.execute(DELIVERY_VIEW + " WHERE d.id = ?", (delivery_id,)).fetchone()
            if row is None:
                return None
            attempts = [
                attempt_from_row(a)
                for a in conn.execute(
                    "SELECT * FROM delivery_attempts WHERE delivery_id = ? ORDER BY id", (delivery_id,)
                )
            ]
            return delivery_from_row(row, with_event=True), attempts

        return await self._read(query)

    async def retry_delivery(self, delivery_id: str, *, now: datetime) -> Delivery | None:
        def tx(conn: sqlite3.Connection) -> Delivery | None:
            if not _queue_again(conn, delivery_id, now, self.now()):
                return None
            return delivery_from_row(conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone())

        delivery = await self._write(tx)
        return self._notify(Written(delivery, 1 if delivery else 0))

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
        def tx(conn: sqlite3.Connection) -> Written[int]:
            events = conn.execute(
                "SELECT e.seq, e.type, e.workflow_run_id, d.id AS delivery_id FROM events e"
                " LEFT JOIN deliveries d ON d.event_seq = e.seq AND d.subscription = ?"
                " WHERE e.occurred_at >= ? AND e.occurred_at < ? ORDER BY e.seq",
                (subscription, ts(since), ts(until)),
            ).fetchall()
            count = 0
            for row in events:
                if row["delivery_id"] is not None:
                    _queue_again(conn, row["delivery_id"], now, self.now())
                    count += 1
                elif matches(row["type"]):
                    self._insert_delivery(conn, row["seq"], subscription, row["workflow_run_id"], ordered, now)
                    count += 1
            return Written(count, count)

        return self._notify(await self._write(tx))

    async def endpoint_health(self) -> dict[str, EndpointHealth]:
        def query(conn: sqlite3.Connection) -> dict[str, EndpointHealth]:
            return {
                row["subscription"]: health_from_row(row) for row in conn.execute("SELECT * FROM subscription_health")
            }

        return await self._read(query)

    async def set_endpoint_disabled(self, subscription: str, *, reason: str | None, now: datetime) -> list[Event]:
        def tx(conn: sqlite3.Connection) -> list[Event]:
            at = ts(now)
            conn.execute(
                "INSERT INTO subscription_health (subscription, consecutive_failures, disabled_at, disabled_reason)"
                " VALUES (?, 0, ?, ?) ON CONFLICT (subscription) DO UPDATE SET disabled_at = excluded.disabled_at,"
                " disabled_reason = excluded.disabled_reason"
                + (", consecutive_failures = 0, first_failure_at = NULL" if reason is None else ""),
                (subscription, at if reason else None, reason),
            )
            if reason is None:
                return []
            event = Event(
                type="webhook.endpoint_disabled",
                workflow_run_id=None,
                occurred_at=now,
                data={"subscription": subscription, "reason": reason},
            )
            self._insert_events(conn, [event])
            return [event]

        events = await self._write(tx)
        self.on_deliveries()  # a re-enabled endpoint's rows are due again too
        return events

    async def pending_subscriptions(self) -> set[str]:
        return await self._read(
            lambda conn: {
                row[0] for row in conn.execute("SELECT DISTINCT subscription FROM deliveries WHERE status = 'pending'")
            }
        )

    async def outbox_stats(self, *, now: datetime) -> dict[str, Any]:
        def query(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries WHERE status = 'pending'"
            ).fetchone()
            oldest = parse_ts(row["oldest"])
            return {"pending": row["n"], "oldest_pending_seconds": (now - oldest).total_seconds() if oldest else 0.0}

        return await self._read(query)


def _queue_again(conn: sqlite3.Connection, delivery_id: str, now: datetime, clock: datetime) -> bool:
    """A retry or replay of one row: marked to go again after the attempt in flight, if one is
    (its lease held at `clock`, the store's time), else pending and due at `now`, its schedule afresh.
    False when there is no such row."""
    at = ts(now)
    if conn.execute(_MARK_RESEND, (at, delivery_id, ts(clock))).rowcount:
        return True
    return bool(conn.execute(_RESET, (at, at, delivery_id)).rowcount)


def _recorded_attempts(conn: sqlite3.Connection, attempt_ids: Sequence[str]) -> set[str]:
    """Which of these attempts are recorded already."""
    found: set[str] = set()
    for start in range(0, len(attempt_ids), 500):
        part = attempt_ids[start : start + 500]
        found.update(
            row[0]
            for row in conn.execute(
                f"SELECT attempt_id FROM delivery_attempts WHERE attempt_id IN ({','.join('?' * len(part))})", part
            )
        )
    return found


def _apply_health_change(conn: sqlite3.Connection, change: HealthChange) -> None:
    if change.reset and not change.failures:
        conn.execute(
            "UPDATE subscription_health SET consecutive_failures = 0, first_failure_at = NULL"
            " WHERE subscription = ? AND consecutive_failures > 0",
            (change.subscription,),
        )
        return
    streak = (
        "excluded.consecutive_failures, first_failure_at = excluded.first_failure_at"
        if change.reset
        else "subscription_health.consecutive_failures + excluded.consecutive_failures,"
        " first_failure_at = COALESCE(subscription_health.first_failure_at, excluded.first_failure_at)"
    )
    conn.execute(
        "INSERT INTO subscription_health (subscription, consecutive_failures, first_failure_at) VALUES (?, ?, ?)"
        f" ON CONFLICT (subscription) DO UPDATE SET consecutive_failures = {streak}",
        (change.subscription, change.failures, ts(change.first_failure_at)),
    )
