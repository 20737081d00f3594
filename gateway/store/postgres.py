"""PostgreSQL backend (asyncpg, pooled): the same `Store` contract as SQLite, for several
gateway instances sharing one database.

Callbacks for one call serialize on transaction-scoped advisory locks keyed by the run id
and the provider's call id, so the lifecycle rules hold exactly as on one instance. Delivery
workers on every instance claim due rows with `FOR UPDATE SKIP LOCKED` and a lease. Commits
that queue deliveries `NOTIFY gateway_deliveries`, so idle workers everywhere wake at once
(each instance's `PostgresListener` LISTENs, and holds leadership, on a session it keeps alive).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from gateway import jsontext
from gateway.calls.lifecycle import CallUpdate
from gateway.calls.planner import BatchPlan, TimelineWrite, UpdateItem, plan_updates
from gateway.calls.record import CallRecord, utcnow
from gateway.calls.states import CallState
from gateway.events.envelope import Event, new_event_id
from gateway.store.activity import plan_activity
from gateway.store.base import (
    CALL_COLUMNS,
    NONCE_PRUNE_EVERY,
    AppliedUpdate,
    AttemptRecord,
    CallSeed,
    Delivery,
    DeliveryResult,
    DirectDispatch,
    EndpointHealth,
    HealthChange,
    Store,
    StoreError,
    TimelineEntry,
    claim_lost,
    clamp_limit,
    health_changes,
    late_attempt,
    new_lease_id,
    share_out,
)
from gateway.store.group_commit import GroupCommit, MaybeCommitted
from gateway.store.migrations import MIGRATIONS
from gateway.store.paging import POSTGRES, page_query, split_page
from gateway.store.postgres_campaigns import PostgresCampaigns
from gateway.store.postgres_listener import CONTROL_CHANNEL, DELIVERIES_CHANNEL, PostgresListener

_MIGRATION_LOCK = 0x6761746577  # "gatew": one migrator at a time across instances
_UPSERT_CALL = (
    f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join(f'${i}' for i in range(1, len(CALL_COLUMNS) + 1))}) "
    "ON CONFLICT (workflow_run_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in CALL_COLUMNS if c != "workflow_run_id")
)
_DELIVERY_SELECT = (
    "SELECT d.*, e.id AS e_id, e.type AS e_type, e.workflow_run_id AS e_run, e.occurred_at AS e_at,"
    " e.data AS e_data, e.seq AS e_seq FROM deliveries d JOIN events e ON e.seq = d.event_seq"
)
_DELIVERY_VIEW = _DELIVERY_SELECT.replace(
    " FROM deliveries d",
    ", (SELECT MIN(a.attempted_at) FROM delivery_attempts a WHERE a.delivery_id = d.id) AS first_attempted"
    " FROM deliveries d",
)
"""`_DELIVERY_SELECT` with the very first attempt's time, for the listings people read."""
_LEASE_FREE = "(lease_until IS NULL OR lease_until < now())"
"""Not leased, on the database's clock: instances whose clocks differ agree on when a lease ends."""
_LEASE = "lease_owner = $1, lease_until = now() + $2 * interval '1 second', lease_id = $3, resend = FALSE"
"""Hand a row out under a new lease ($1 owner, $2 seconds, $3 lease id); a retry asked for before is met by it."""
_LOCK_IN_ORDER = (
    "SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n"
)
"""Transaction-scoped advisory locks on the keys $1, one after the other in the order given."""
_FIND_CALLS = (
    "SELECT * FROM calls WHERE workflow_run_id IN (SELECT workflow_run_id FROM calls WHERE workflow_run_id = ANY($1::text[])"
    " UNION ALL SELECT c.workflow_run_id FROM calls c JOIN unnest($2::text[], $3::text[]) AS w(provider, call_id)"
    " ON c.provider = w.provider AND c.provider_call_id = w.call_id) ORDER BY workflow_run_id FOR UPDATE"
)
"""The calls with run ids $1 or (provider, provider's call id) in ($2, $3), row-locked in one order."""
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


def split_store_url(url: str) -> tuple[str, str | None]:
    """(DSN for asyncpg, schema or None): a `?schema=NAME` query parameter picks the schema."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql" if parts.scheme in ("postgresql", "postgres") else parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


def _record(row: Mapping[str, Any]) -> CallRecord:
    values = {name: row[name] for name in CALL_COLUMNS}
    values["state"] = CallState(values["state"])
    return CallRecord(**values)


def _record_params(record: CallRecord) -> list[Any]:
    out = []
    for name in CALL_COLUMNS:
        value = getattr(record, name)
        if name == "state":
            value = value.value
        out.append(value)
    return out


def _event(row: Mapping[str, Any], prefix: str = "") -> Event:
    if prefix:
        return Event(
            type=row["e_type"],
            workflow_run_id=row["e_run"],
            occurred_at=row["e_at"],
            data=row["e_data"],
            id=row["e_id"],
            seq=row["e_seq"],
        )
    return Event(
        type=row["type"],
        workflow_run_id=row["workflow_run_id"],
        occurred_at=row["occurred_at"],
        data=row["data"],
        id=row["id"],
        seq=row["seq"],
    )


def _delivery(row: Mapping[str, Any], *, with_event: bool = False) -> Delivery:
    return Delivery(
        id=row["id"],
        event_seq=row["event_seq"],
        subscription=row["subscription"],
        workflow_run_id=row["workflow_run_id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        first_attempt_at=row["first_attempt_at"],
        last_attempt_at=row["last_attempt_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        event=_event(row, "e_") if with_event else None,
        order_key=row["order_key"],
        lease_id=row["lease_id"],
        first_attempted_at=row["first_attempted"] if "first_attempted" in row.keys() else None,
    )


async def _apply_health_change(conn: asyncpg.Connection, change: HealthChange) -> None:
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


async def _queue_again(conn: asyncpg.Connection, delivery_id: str, now: datetime) -> Mapping[str, Any] | None:
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


TimelineRow = tuple[str, datetime, str, str, str, "str | None", "str | None", "int | None", str]
"""A `call_timeline` row: run, received at, source, kind, outcome, raw status, state, sequence, data (JSON text)."""


def _timeline_row(entry: TimelineWrite) -> TimelineRow:
    """A timeline entry as `_INSERT_EVENTS` takes it."""
    return (
        entry.run_id,
        entry.received_at,
        entry.source,
        entry.kind,
        entry.outcome,
        entry.raw_status,
        entry.state,
        entry.sequence,
        jsontext.dumps(entry.data),
    )


def _health(row: Mapping[str, Any]) -> EndpointHealth:
    return EndpointHealth(
        subscription=row["subscription"],
        consecutive_failures=row["consecutive_failures"],
        first_failure_at=row["first_failure_at"],
        disabled_at=row["disabled_at"],
        disabled_reason=row["disabled_reason"],
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=jsontext.dumps, decoder=jsontext.loads, schema="pg_catalog")


async def _lock_runs(conn: asyncpg.Connection, run_ids: Sequence[str]) -> None:
    """Take the calls' transaction-scoped run locks, in sorted order (every writer of a call's
    events holds its lock: callbacks, media activity, replays)."""
    keys = [(f"run:{run_id}",) for run_id in sorted(set(run_ids))]
    if len(keys) == 1:  # a callback's one lock: the plain statement it always was
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", *keys[0])
    elif keys:
        await conn.executemany("SELECT pg_advisory_xact_lock(hashtext($1))", keys)


class PostgresStore(PostgresCampaigns, Store):
    """The scale-out store (campaigns: `PostgresCampaigns`)."""

    supports_campaigns = True

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self.url = url
        self.dsn, self.schema = split_store_url(url)
        self.min_size, self.max_size = min_size, max_size
        self._pool: asyncpg.Pool | None = None
        self.listener: PostgresListener | None = None
        self._nonces_pruned: datetime | None = None
        # A callback alone goes the batch's way too (fewer round trips); `_apply_one` is the
        # way of each callback of a batch that failed.
        self._callbacks: GroupCommit[tuple[CallUpdate, str | None, CallSeed | None], AppliedUpdate] = GroupCommit(
            self._apply_batch, self._apply_one, min_batch=1
        )

    # -- plumbing ---------------------------------------------------------------------
    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is closed")
        return self._pool

    async def open(self) -> None:
        settings = {"search_path": self.schema} if self.schema else {}
        try:
            if self.schema:
                conn = await asyncpg.connect(self.dsn)
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                init=_init_connection,
                server_settings=settings,
            )
            async with self.pool.acquire() as conn:
                await self._migrate(conn)
            self.listener = PostgresListener(
                self.dsn, settings, on_deliveries=lambda: self.on_deliveries(), on_control=self._on_control
            )
            await self.listener.start()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreError(f"cannot open PostgreSQL store: {type(exc).__name__}: {exc}") from exc

    async def hold_leadership(self, name: str) -> bool:
        """A session advisory lock on the listener's session, confirmed live at every call (see
        `PostgresListener`): one leader per database and schema, and none while its session is gone."""
        return self.listener is not None and await self.listener.hold(name)

    def _on_control(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            run_id, action, data = message["run_id"], message["action"], message.get("data") or {}
        except (ValueError, KeyError, TypeError):
            return
        if self.control_handler is not None:
            self.control_handler(run_id, action, data)

    async def publish_control(self, run_id: str, action: str, data: dict[str, Any] | None = None) -> None:
        """NOTIFY every instance (this one included); the owner of the media session acts."""
        payload = json.dumps({"run_id": run_id, "action": action, "data": data or {}})
        await self._query(lambda conn: conn.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, payload))

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
            for migration in MIGRATIONS:
                if migration.version not in done:
                    await conn.execute(migration.postgresql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        utcnow(),
                    )

    async def close(self) -> None:
        if self.listener is not None:
            listener, self.listener = self.listener, None
            await listener.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        try:
            await self.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {exc}") from exc

    async def _tx(self, fn: Callable[[asyncpg.Connection], Any]) -> Any:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                return await fn(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from exc

    async def _query(self, fn: Callable[[asyncpg.Connection], Any]) -> Any:
        try:
            async with self.pool.acquire() as conn:
                return await fn(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from exc

    # -- writes -----------------------------------------------------------------------
    @staticmethod
    async def _load(conn: asyncpg.Connection, run_id: str, *, lock: bool = False) -> CallRecord | None:
        row = await conn.fetchrow(
            "SELECT * FROM calls WHERE workflow_run_id = $1" + (" FOR UPDATE" if lock else ""), run_id
        )
        return None if row is None else _record(row)

    async def _insert_events(
        self, conn: asyncpg.Connection, events: list[Event], leased: list[Delivery] | None = None
    ) -> int:
        """Write events and one delivery row per subscription (`_write_events`, one group)."""
        return await self._write_events(conn, [events], leased)

    async def _write_events(
        self,
        conn: asyncpg.Connection,
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
        conn: asyncpg.Connection, event_seq: int, subscription: str, run_id: str | None, ordered: bool, now: datetime
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

    async def apply_update(
        self, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None
    ) -> AppliedUpdate:
        """Callbacks that wait together are written in one transaction (`_apply_batch`); a
        campaign dial's, whose claim is checked under its run's lock, alone (`_apply_one`)."""
        if seed is not None and seed.claim is not None:
            return await self._apply_one((update, run_id, seed))
        return await self._callbacks.submit((update, run_id, seed))

    async def _apply_one(self, item: tuple[CallUpdate, str | None, CallSeed | None]) -> AppliedUpdate:
        """One callback in a transaction of its own."""
        update, run_id, seed = item

        async def tx(conn: asyncpg.Connection) -> AppliedUpdate:
            # Serialize every writer of this call, on every instance, before reading it.
            if update.provider_call_id:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"{update.provider}:{update.provider_call_id}"
                )
            if run_id:
                await _lock_runs(conn, [run_id])
            now = utcnow()
            current = await self._load(conn, run_id, lock=True) if run_id else None
            if current is None and update.provider_call_id:
                row = await conn.fetchrow(
                    "SELECT * FROM calls WHERE provider = $1 AND provider_call_id = $2 FOR UPDATE",
                    update.provider,
                    update.provider_call_id,
                )
                current = None if row is None else _record(row)
            if current is None and seed is not None and seed.claim is not None:
                # Under the run's lock, as `release_campaign_claim` checks for the record: one of
                # the two wins, so a released claim is never dialed.
                if (
                    await conn.fetchval(
                        "SELECT 1 FROM campaign_contacts WHERE campaign_id = $1 AND position = $2 AND status = 'dialing'"
                        " AND workflow_run_id = $3",
                        seed.claim[0],
                        seed.claim[1],
                        run_id,
                    )
                    is None
                ):
                    raise claim_lost(seed.claim, run_id)
            plan = plan_updates([UpdateItem(update, run_id, seed)], [current] if current else [], now=now)
            await self._write_plan(conn, plan, leased)
            return plan.applied[0]

        leased: list[Delivery] = []
        applied = await self._tx(tx)
        self._handover(leased)
        return applied

    async def _apply_batch(self, items: list[tuple[CallUpdate, str | None, CallSeed | None]]) -> list[AppliedUpdate]:
        """Several callbacks, in order, in one transaction: what each would have written alone,
        with one statement for their locks, one to find their calls and one per table.

        The locks are those each callback takes alone, in one global order (the provider's call
        ids sorted, then the run ids sorted), so batches on any instance cannot deadlock with
        each other or with a callback alone. A later callback sees what an earlier one of the
        batch did to its call. Raises `MaybeCommitted` when the COMMIT got no answer."""
        leased: list[Delivery] = []
        try:
            async with self.pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    applied = await self._write_callbacks(conn, items, leased)
                except BaseException:
                    await transaction.rollback()
                    raise
                try:
                    await transaction.commit()
                except (OSError, asyncpg.InterfaceError) as exc:
                    raise MaybeCommitted() from StoreError(
                        f"postgresql: the commit got no answer: {type(exc).__name__}: {exc}"
                    )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from exc
        self._handover(leased)
        return applied

    async def _write_callbacks(
        self,
        conn: asyncpg.Connection,
        items: list[tuple[CallUpdate, str | None, CallSeed | None]],
        leased: list[Delivery],
    ) -> list[AppliedUpdate]:
        """`_apply_batch`'s statements, inside its transaction."""
        calls = sorted({f"{u.provider}:{u.provider_call_id}" for u, _, _ in items if u.provider_call_id})
        runs = sorted({run_id for _, run_id, _ in items if run_id})
        await conn.execute(_LOCK_IN_ORDER, calls + [f"run:{run_id}" for run_id in runs])
        now = utcnow()
        pairs = list(dict.fromkeys((u.provider, u.provider_call_id) for u, _, _ in items if u.provider_call_id))
        found = {
            row["workflow_run_id"]: _record(row)
            for row in await conn.fetch(_FIND_CALLS, runs, [p for p, _ in pairs], [c for _, c in pairs])
        }
        plan = plan_updates([UpdateItem(*item) for item in items], found.values(), now=now)
        await self._write_plan(conn, plan, leased)
        return plan.applied

    async def _write_plan(self, conn: asyncpg.Connection, plan: BatchPlan, leased: list[Delivery]) -> None:
        """Write what `plan_updates` planned: the calls it changed, its events with their
        delivery rows, and its timeline entries."""
        await conn.executemany(_UPSERT_CALL, [_record_params(record) for record in plan.changed.values()])
        await self._write_events(
            conn,
            plan.events,
            leased,
            new_calls=plan.created,
            timeline=[_timeline_row(entry) for entry in plan.timeline],
        )

    async def record_activity(
        self,
        run_id: str,
        *,
        source: str,
        kind: str,
        data: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]] = (),
        gathered_context: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
        media: dict[str, Any] | None = None,
        session: str | None = None,
    ) -> list[Event]:
        async def tx(conn: asyncpg.Connection) -> list[Event]:
            await _lock_runs(conn, [run_id])  # as a callback of this call, and a replay, do
            now = utcnow()
            record = await self._load(conn, run_id, lock=True)
            if record is None:
                raise StoreError(f"unknown workflow_run_id {run_id!r}")
            plan = plan_activity(
                record,
                source=source,
                kind=kind,
                data=data,
                now=now,
                session=session,
                events=events,
                gathered_context=gathered_context,
                annotations=annotations,
                media=media,
            )
            if plan is None:
                return []
            if plan.record is not None:
                await conn.execute(_UPSERT_CALL, *_record_params(plan.record))
            await self._write_events(conn, [plan.events], leased, timeline=[_timeline_row(plan.timeline)])
            return plan.events

        leased: list[Delivery] = []
        emitted = await self._tx(tx)
        self._handover(leased)
        return emitted

    async def claim_nonce(self, nonce: str, *, expires_at: datetime, now: datetime) -> bool:
        async def tx(conn: asyncpg.Connection) -> bool:
            if self._nonces_pruned is None or now - self._nonces_pruned >= NONCE_PRUNE_EVERY:
                await conn.execute("DELETE FROM seen_nonces WHERE expires_at < $1", now)
                self._nonces_pruned = now
            inserted = await conn.fetchval(
                "INSERT INTO seen_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT (nonce) DO UPDATE"
                " SET expires_at = excluded.expires_at WHERE seen_nonces.expires_at < $3 RETURNING 1",
                nonce,
                expires_at,
                now,
            )
            return inserted == 1

        return await self._tx(tx)

    # -- reads ------------------------------------------------------------------------
    async def get_call(self, run_id: str) -> CallRecord | None:
        return await self._query(lambda conn: self._load(conn, run_id))

    async def get_timeline(self, run_id: str) -> list[TimelineEntry]:
        async def query(conn: asyncpg.Connection) -> list[TimelineEntry]:
            rows = await conn.fetch("SELECT * FROM call_timeline WHERE workflow_run_id = $1 ORDER BY id", run_id)
            return [
                TimelineEntry(
                    id=r["id"],
                    received_at=r["received_at"],
                    source=r["source"],
                    kind=r["kind"],
                    outcome=r["outcome"],
                    raw_status=r["raw_status"],
                    state=r["state"],
                    sequence=r["sequence"],
                    data=r["data"],
                )
                for r in rows
            ]

        return await self._query(query)

    async def list_calls(
        self, *, state: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[CallRecord], str | None]:
        limit = clamp_limit(limit)
        sql, params = page_query(
            "SELECT * FROM calls",
            [("state", state)],
            keys=("created_at", "workflow_run_id"),
            cursor=cursor,
            limit=limit,
            dialect=POSTGRES,
        )

        async def query(conn: asyncpg.Connection) -> tuple[list[CallRecord], str | None]:
            rows, next_cursor = split_page(
                await conn.fetch(sql, *params), limit, key="workflow_run_id", dialect=POSTGRES
            )
            return [_record(r) for r in rows], next_cursor

        return await self._query(query)

    async def list_events(self, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None) -> list[Event]:
        async def query(conn: asyncpg.Connection) -> list[Event]:
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
            return [_event(r) for r in rows]

        return await self._query(query)

    # -- deliveries -----------------------------------------------------------------------
    async def claim_deliveries(
        self, owner: str, *, now: datetime, lease_seconds: float, capacity: Mapping[str, int], limit: int = 200
    ) -> list[Delivery]:
        wanted = {name: min(n, limit) for name, n in capacity.items() if n > 0}
        if not wanted:
            return []
        lease_id = new_lease_id()

        async def tx(conn: asyncpg.Connection) -> list[Delivery]:
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
                _DELIVERY_SELECT + " WHERE d.id = ANY($1::text[]) ORDER BY d.next_attempt_at, d.event_seq", ids
            )
            return [_delivery(r, with_event=True) for r in claimed]

        return await self._tx(tx)

    async def finish_deliveries(
        self, owner: str, items: Sequence[tuple[Delivery, DeliveryResult]]
    ) -> list[EndpointHealth | None]:
        if not items:
            return []
        dispatch = self.dispatch if self.dispatch is not None and self.dispatch.owner == owner else None

        async def tx(conn: asyncpg.Connection) -> list[EndpointHealth | None]:
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
                    row["workflow_run_id"]: _record(row)
                    for row in await conn.fetch(
                        "SELECT * FROM calls WHERE workflow_run_id = ANY($1::text[]) ORDER BY workflow_run_id FOR UPDATE",
                        sorted({d.workflow_run_id for d, _ in mapped}),
                    )
                }
                for delivery, result in mapped:
                    record = calls.get(delivery.workflow_run_id or "")
                    if record is not None:
                        record.gathered_context.update(result.gathered_context or {})
                        record.updated_at = result.attempt.attempted_at
                await conn.executemany(_UPSERT_CALL, [_record_params(record) for record in calls.values()])
            for change in health_changes(moved):
                await _apply_health_change(conn, change)
            rows = await conn.fetch(
                "SELECT * FROM subscription_health WHERE subscription = ANY($1::text[])",
                list({d.subscription for d, _ in items}),
            )
            health = {row["subscription"]: _health(row) for row in rows}
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

    @staticmethod
    async def _next_in_order(
        conn: asyncpg.Connection,
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
        now = utcnow()
        rows = await conn.fetch(
            _DELIVERY_SELECT.replace(
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
                offered.append(_delivery(row, with_event=True))
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
        async def tx(conn: asyncpg.Connection) -> int:
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
            _DELIVERY_VIEW,
            [("d.status", status), ("d.subscription", subscription), ("d.workflow_run_id", run_id)],
            keys=("d.created_at", "d.id"),
            cursor=cursor,
            limit=limit,
            dialect=POSTGRES,
        )

        async def query(conn: asyncpg.Connection) -> tuple[list[Delivery], str | None]:
            rows, next_cursor = split_page(await conn.fetch(sql, *params), limit, key="id", dialect=POSTGRES)
            return [_delivery(r, with_event=True) for r in rows], next_cursor

        return await self._query(query)

    async def get_delivery(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        async def query(conn: asyncpg.Connection) -> tuple[Delivery, list[AttemptRecord]] | None:
            row = await conn.fetchrow(_DELIVERY_VIEW + " WHERE d.id = $1", delivery_id)
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
            return _delivery(row, with_event=True), attempts

        return await self._query(query)

    async def retry_delivery(self, delivery_id: str, *, now: datetime) -> Delivery | None:
        async def tx(conn: asyncpg.Connection) -> Delivery | None:
            row = await _queue_again(conn, delivery_id, now)
            if row is not None:
                await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
            return None if row is None else _delivery(row)

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
        async def tx(conn: asyncpg.Connection) -> int:
            # The calls' run locks first, as their callbacks take them: a callback writing a newer
            # event of one of these calls waits for the replayed rows, so an ordered subscription
            # queues it after them. Sorted, so two replays cannot deadlock.
            runs = await conn.fetch(
                "SELECT DISTINCT workflow_run_id FROM events WHERE occurred_at >= $1 AND occurred_at < $2"
                " AND workflow_run_id IS NOT NULL",
                since,
                until,
            )
            await _lock_runs(conn, [r["workflow_run_id"] for r in runs])
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
        async def query(conn: asyncpg.Connection) -> dict[str, EndpointHealth]:
            return {r["subscription"]: _health(r) for r in await conn.fetch("SELECT * FROM subscription_health")}

        return await self._query(query)

    async def set_endpoint_disabled(self, subscription: str, *, reason: str | None, now: datetime) -> list[Event]:
        async def tx(conn: asyncpg.Connection) -> list[Event]:
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
        oldest = row["oldest"]
        return {"pending": row["n"], "oldest_pending_seconds": (now - oldest).total_seconds() if oldest else 0.0}
