"""The PostgreSQL `events` table and the delivery rows each event fans out to, written in one
statement with the timeline entries of the same transaction, leasing to the direct dispatch the
rows it takes (a part of `PostgresStore`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Sequence
from datetime import datetime

from gateway.events.envelope import Event, new_event_id
from gateway.store.base import (
    Delivery,
    clamp_limit,
    new_lease_id,
)
from gateway.store.postgres_listener import DELIVERIES_CHANNEL
from gateway.store.postgres_pool import Conn, PostgresPool
from gateway.store.postgres_rows import TimelineRow, event_from_row

_PENDING_IN_ORDER = (
    "SELECT DISTINCT d.subscription, d.order_key FROM deliveries d JOIN unnest($1::text[], $2::text[]) AS w(sub, key)"
    " ON d.subscription = w.sub AND d.order_key = w.key WHERE d.status = 'pending'"
)
"""Which of the (subscription $1, call $2) pairs have a delivery still pending (their next one waits)."""
_INSERT_EVENTS = (
    "WITH e AS (INSERT INTO events (id, type, workflow_run_id, occurred_at, data)"
    " SELECT v.id, v.type, v.run, v.at, v.data::jsonb"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) WITH ORDINALITY AS v(id, type, run, at, data, n)"
    " ORDER BY v.n RETURNING id, seq),"
    " d AS (INSERT INTO deliveries (id, event_seq, subscription, workflow_run_id, order_key, status, attempts,"
    " next_attempt_at, lease_owner, lease_until, lease_id, created_at, updated_at)"
    " SELECT w.id, e.seq, w.sub, w.run, w.key, 'pending', 0, w.at, w.owner,"
    " CASE WHEN w.owner IS NOT NULL THEN now() + $14::float8 * interval '1 second' END, w.lease_id, w.at, w.at"
    " FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::timestamptz[])"
    " AS w(id, event_id, sub, run, key, owner, lease_id, at) JOIN e ON e.id = w.event_id),"
    " t AS (INSERT INTO call_timeline (workflow_run_id, received_at, source, kind, outcome, raw_status, state, sequence, data)"
    " SELECT t.run, t.at, t.source, t.kind, t.outcome, t.raw, t.state, t.seq, t.data::jsonb FROM unnest($15::text[],"
    " $16::timestamptz[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::bigint[], $23::text[])"
    " WITH ORDINALITY AS t(run, at, source, kind, outcome, raw, state, seq, data, n) ORDER BY t.n)"
    " SELECT id, seq FROM e"
)
"""Events ($1-$5: id, type, run, time, data as JSON text), numbered in that order, their delivery rows
($6-$13: id, event id, subscription, run, order key, lease owner, lease id, due time; leased for $14
seconds on the database's clock) and timeline entries ($15-$23, `TimelineRow`, in order), in one
statement; returns each event's (id, seq)."""


class PostgresEvents(PostgresPool):
    """Events and their delivery rows on the PostgreSQL pool."""

    async def _insert_events(self, conn: Conn, events: list[Event], leased: list[Delivery] | None = None) -> int:
        """Write events and one delivery row per subscription (`_write_events`, one group)."""
        return await self._write_events(conn, [events], leased)

    async def _write_events(
        self,
        conn: Conn,
        groups: Sequence[Sequence[Event]],
        leased: list[Delivery] | None = None,
        new_calls: Container[str] = (),
        timeline: Sequence[TimelineRow] = (),
    ) -> int:
        """Write the events of each group (one callback's, in order), one delivery row per
        subscription and the `timeline` entries, in one statement; NOTIFY once when rows were
        queued that a claim can take now (not those behind an earlier pending event of their
        call). Returns how many were.

        Given a `leased` list, a row the direct dispatch takes (it has room for the subscription,
        and no earlier event of the call is still pending for it) is leased to it and added there
        (see `DirectDispatch`). `new_calls` were made by this transaction: no rows of theirs can
        be pending from before (no need to look)."""
        events = [event for group in groups for event in group]
        if not events and not timeline:
            return 0
        dispatch = self.dispatch if leased is not None else None
        routes = [(event, self.fanout(event)) for event in events]
        pending: set[tuple[str, str]] = set()
        if dispatch is not None:
            asked = {
                (subscription, event.workflow_run_id)
                for event, subs in routes
                for subscription, ordered in subs
                if ordered and event.workflow_run_id and event.workflow_run_id not in new_calls
            }
            if asked:
                pending = {
                    (r[0], r[1])
                    for r in await conn.fetch(_PENDING_IN_ORDER, [s for s, _ in asked], [k for _, k in asked])
                }
        lease_id = new_lease_id()
        waiting: set[tuple[str, str]] = set()  # (subscription, call) with a row pending now
        taken: dict[str, int] = defaultdict(int)  # leased in this transaction, by subscription
        rows: list[tuple[Delivery, str | None]] = []  # (row, lease owner)
        queued = 0
        for event, subs in routes:
            for subscription, ordered in subs:
                key = event.workflow_run_id if ordered else None
                take = dispatch is not None and dispatch.room(subscription) > taken[subscription]
                behind = False  # an earlier event of the call is still pending for the subscription
                if key is not None:
                    behind = (subscription, key) in waiting or (subscription, key) in pending
                    take = take and not behind
                    waiting.add((subscription, key))
                at = event.occurred_at
                delivery = Delivery(
                    id=new_event_id("msg"),
                    event_seq=0,
                    subscription=subscription,
                    workflow_run_id=event.workflow_run_id,
                    status="pending",
                    attempts=0,
                    next_attempt_at=at,
                    created_at=at,
                    updated_at=at,
                    event=event,
                    order_key=key,
                    lease_id=lease_id if take else None,
                )
                rows.append((delivery, dispatch.owner if take and dispatch is not None else None))
                if take:
                    taken[subscription] += 1
                elif not behind:  # a row behind another goes when that one ends (`_next_in_order`), not on a wake-up
                    queued += 1
        written = await conn.fetch(
            _INSERT_EVENTS,
            [e.id for e in events],
            [e.type for e in events],
            [e.workflow_run_id for e in events],
            [e.occurred_at for e in events],
            [e.data_json() for e in events],
            [d.id for d, _ in rows],
            [d.event.id for d, _ in rows if d.event],
            [d.subscription for d, _ in rows],
            [d.workflow_run_id for d, _ in rows],
            [d.order_key for d, _ in rows],
            [owner for _, owner in rows],
            [d.lease_id for d, _ in rows],
            [d.next_attempt_at for d, _ in rows],
            dispatch.lease_seconds if dispatch is not None else None,
            *([row[i] for row in timeline] for i in range(9)),
        )
        seqs = {row["id"]: row["seq"] for row in written}
        for event in events:
            event.seq = seqs[event.id]
        for delivery, owner in rows:
            delivery.event_seq = delivery.event.seq if delivery.event else 0
            if owner is not None:
                assert leased is not None
                leased.append(delivery)
        if queued:
            await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
        return queued

    @staticmethod
    async def _insert_delivery(
        conn: Conn, event_seq: int, subscription: str, run_id: str | None, ordered: bool, now: datetime
    ) -> None:
        """A pending delivery row, for a claim."""
        await conn.execute(
            "INSERT INTO deliveries (id, event_seq, subscription, workflow_run_id, order_key, status, attempts,"
            " next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)",
            new_event_id("msg"),
            event_seq,
            subscription,
            run_id,
            run_id if ordered else None,
            now,
        )

    def _handover(self, leased: list[Delivery]) -> None:
        """After the commit: rows leased to the direct dispatch go to it."""
        if leased:
            assert self.dispatch is not None
            self.dispatch.deliver(leased)

    async def list_events(self, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None) -> list[Event]:
        async def query(conn: Conn) -> list[Event]:
            if run_id is None:
                rows = await conn.fetch(
                    "SELECT * FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, clamp_limit(limit)
                )
            else:
                rows = await conn.fetch(
                    "SELECT * FROM events WHERE seq > $1 AND workflow_run_id = $2 ORDER BY seq LIMIT $3",
                    after_seq,
                    run_id,
                    clamp_limit(limit),
                )
            return [event_from_row(r) for r in rows]

        return await self._query(query)
