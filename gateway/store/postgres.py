"""PostgreSQL backend (asyncpg, pooled): the same `Store` contract as SQLite, for several
gateway instances sharing one database.

Callbacks for one call serialize on transaction-scoped advisory locks keyed by the run id
and the provider's call id, so the lifecycle rules hold exactly as on one instance. Delivery
workers on every instance claim due rows with `FOR UPDATE SKIP LOCKED` and a lease. Commits
that queue deliveries `NOTIFY gateway_deliveries`, so idle workers everywhere wake at once.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from gateway.calls.lifecycle import CallUpdate, decide_transition
from gateway.calls.record import CallRecord, utcnow
from gateway.calls.states import CallState
from gateway.events.envelope import Event, new_event_id
from gateway.store.base import (
    CALL_COLUMNS,
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
    clamp_limit,
    event_data,
    health_changes,
)
from gateway.store.migrations import MIGRATIONS
from gateway.store.postgres_campaigns import PostgresCampaigns
from gateway.store.paging import POSTGRES, page_query, split_page

DELIVERIES_CHANNEL = "gateway_deliveries"
CONTROL_CHANNEL = "gateway_control"
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
    " FROM deliveries d", ", (SELECT MIN(a.attempted_at) FROM delivery_attempts a WHERE a.delivery_id = d.id) AS first_attempted"
    " FROM deliveries d")
"""`_DELIVERY_SELECT` with the very first attempt's time, for the listings people read."""


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
        return Event(type=row["e_type"], workflow_run_id=row["e_run"], occurred_at=row["e_at"], data=row["e_data"],
                     id=row["e_id"], seq=row["e_seq"])
    return Event(type=row["type"], workflow_run_id=row["workflow_run_id"], occurred_at=row["occurred_at"], data=row["data"],
                 id=row["id"], seq=row["seq"])


def _delivery(row: Mapping[str, Any], *, with_event: bool = False) -> Delivery:
    return Delivery(
        id=row["id"], event_seq=row["event_seq"], subscription=row["subscription"], workflow_run_id=row["workflow_run_id"],
        status=row["status"], attempts=row["attempts"], next_attempt_at=row["next_attempt_at"], created_at=row["created_at"],
        updated_at=row["updated_at"], first_attempt_at=row["first_attempt_at"], last_attempt_at=row["last_attempt_at"],
        last_status=row["last_status"], last_error=row["last_error"], event=_event(row, "e_") if with_event else None,
        order_key=row["order_key"], first_attempted_at=row["first_attempted"] if "first_attempted" in row.keys() else None,
    )


async def _apply_health_change(conn: asyncpg.Connection, change: HealthChange) -> None:
    if change.reset and not change.failures:
        await conn.execute("UPDATE subscription_health SET consecutive_failures = 0, first_failure_at = NULL"
                           " WHERE subscription = $1 AND consecutive_failures > 0", change.subscription)
        return
    streak = ("excluded.consecutive_failures, first_failure_at = excluded.first_failure_at" if change.reset else
              "subscription_health.consecutive_failures + excluded.consecutive_failures,"
              " first_failure_at = COALESCE(subscription_health.first_failure_at, excluded.first_failure_at)")
    await conn.execute(
        "INSERT INTO subscription_health (subscription, consecutive_failures, first_failure_at) VALUES ($1, $2, $3)"
        f" ON CONFLICT (subscription) DO UPDATE SET consecutive_failures = {streak}",
        change.subscription, change.failures, change.first_failure_at,
    )


def _health(row: Mapping[str, Any]) -> EndpointHealth:
    return EndpointHealth(subscription=row["subscription"], consecutive_failures=row["consecutive_failures"],
                          first_failure_at=row["first_failure_at"], disabled_at=row["disabled_at"],
                          disabled_reason=row["disabled_reason"])


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=lambda v: json.dumps(v, separators=(",", ":"), default=str),
                                  decoder=json.loads, schema="pg_catalog")


class PostgresStore(PostgresCampaigns, Store):
    """The scale-out store (campaigns: `PostgresCampaigns`)."""

    supports_campaigns = True

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self.url = url
        self.dsn, self.schema = split_store_url(url)
        self.min_size, self.max_size = min_size, max_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None

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
            self._pool = await asyncpg.create_pool(self.dsn, min_size=self.min_size, max_size=self.max_size,
                                                   init=_init_connection, server_settings=settings)
            async with self.pool.acquire() as conn:
                await self._migrate(conn)
            self._listener = await asyncpg.connect(self.dsn, server_settings=settings)
            await self._listener.add_listener(DELIVERIES_CHANNEL, lambda *args: self.on_deliveries())
            await self._listener.add_listener(CONTROL_CHANNEL, self._on_control)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreError(f"cannot open PostgreSQL store: {type(exc).__name__}: {exc}") from exc

    async def hold_leadership(self, name: str) -> bool:
        """A session advisory lock on the listener connection: held until this process (or its
        connection) goes away, then another instance's next call takes it over."""
        if self._listener is None:
            return False
        held = getattr(self, "_leading", set())
        if name in held:
            return True
        try:
            got = await self._listener.fetchval(  # one leader per database and schema
                "SELECT pg_try_advisory_lock(hashtext(current_database() || '.' || current_schema() || ':' || $1))", f"leader:{name}")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {exc}") from exc
        if got:
            held.add(name)
            self._leading = held
        return bool(got)

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
                    await conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                                       migration.version, migration.name, utcnow())

    async def close(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                await listener.close()
            except (OSError, asyncpg.InterfaceError):
                pass
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
            async with self.pool.acquire() as conn:
                async with conn.transaction():
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
        row = await conn.fetchrow("SELECT * FROM calls WHERE workflow_run_id = $1" + (" FOR UPDATE" if lock else ""), run_id)
        return None if row is None else _record(row)

    @staticmethod
    async def _insert_timeline(conn: asyncpg.Connection, run_id: str, at: datetime, *, source: str, kind: str, outcome: str,
                               raw_status: str | None, state: str | None, sequence: int | None, data: dict[str, Any]) -> None:
        await conn.execute(
            "INSERT INTO call_timeline (workflow_run_id, received_at, source, kind, outcome, raw_status, state, sequence, data)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", run_id, at, source, kind, outcome, raw_status, state, sequence, data,
        )

    async def _insert_events(self, conn: asyncpg.Connection, events: list[Event], leased: list[Delivery] | None = None) -> int:
        """Write events and one delivery row per subscription; NOTIFY when rows were queued for a
        claim. Given a `leased` list, rows the direct dispatch takes are leased to it and added
        there instead (see `DirectDispatch`)."""
        queued = 0
        dispatch = self.dispatch if leased is not None else None
        waiting: set[tuple[str, str]] = set()
        taken: dict[str, int] = {}  # leased in this transaction, by subscription
        for event in events:
            event.seq = await conn.fetchval(
                "INSERT INTO events (id, type, workflow_run_id, occurred_at, data) VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                event.id, event.type, event.workflow_run_id, event.occurred_at, event.data,
            )
            for subscription, ordered in self.fanout(event):
                key = event.workflow_run_id if ordered else None
                take = dispatch is not None and dispatch.room(subscription) > taken.get(subscription, 0)
                if key is not None:
                    if take and ((subscription, key) in waiting or await conn.fetchval(
                            "SELECT 1 FROM deliveries WHERE status = 'pending' AND subscription = $1 AND order_key = $2 LIMIT 1",
                            subscription, key)):
                        take = False
                    waiting.add((subscription, key))
                delivery = await self._insert_delivery(conn, event.seq, subscription, event.workflow_run_id, ordered,
                                                       event.occurred_at, lease=dispatch if take else None, event=event)
                if take:
                    assert leased is not None
                    taken[subscription] = taken.get(subscription, 0) + 1
                    leased.append(delivery)
                else:
                    queued += 1
        if queued:
            await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
        return queued

    @staticmethod
    async def _insert_delivery(conn: asyncpg.Connection, event_seq: int, subscription: str, run_id: str | None,
                               ordered: bool, now: datetime, *, lease: DirectDispatch | None = None,
                               event: Event | None = None) -> Delivery:
        delivery_id = new_event_id("msg")
        key = run_id if ordered else None
        await conn.execute(
            "INSERT INTO deliveries (id, event_seq, subscription, workflow_run_id, order_key, status, attempts,"
            " next_attempt_at, lease_owner, lease_until, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $8, $6, $6)",
            delivery_id, event_seq, subscription, run_id, key, now,
            lease.owner if lease else None, now + timedelta(seconds=lease.lease_seconds) if lease else None,
        )
        return Delivery(id=delivery_id, event_seq=event_seq, subscription=subscription, workflow_run_id=run_id,
                        status="pending", attempts=0, next_attempt_at=now, created_at=now, updated_at=now,
                        event=event, order_key=key)

    def _handover(self, leased: list[Delivery]) -> None:
        """After the commit: rows leased to the direct dispatch go to it."""
        if leased:
            assert self.dispatch is not None
            self.dispatch.deliver(leased)

    async def apply_update(self, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None) -> AppliedUpdate:
        async def tx(conn: asyncpg.Connection) -> AppliedUpdate:
            # Serialize every writer of this call, on every instance, before reading it.
            if update.provider_call_id:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{update.provider}:{update.provider_call_id}")
            if run_id:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"run:{run_id}")
            now = utcnow()
            current = await self._load(conn, run_id, lock=True) if run_id else None
            if current is None and update.provider_call_id:
                row = await conn.fetchrow("SELECT * FROM calls WHERE provider = $1 AND provider_call_id = $2 FOR UPDATE",
                                          update.provider, update.provider_call_id)
                current = None if row is None else _record(row)
            target = current.workflow_run_id if current else (run_id or str(uuid.uuid4()))
            transition = decide_transition(current, update, run_id=target, now=now)
            record = transition.record
            if seed is not None:
                seed.fill(record)
            await conn.execute(_UPSERT_CALL, *_record_params(record))
            await self._insert_timeline(conn, target, now, source=update.provider, kind=update.kind, outcome=transition.outcome,
                                        raw_status=update.raw_status, state=update.state.value if update.state else None,
                                        sequence=update.sequence, data=update.params)
            events = [Event(type=name, workflow_run_id=target, occurred_at=now, data=event_data(record)) for name in transition.events]
            await self._insert_events(conn, events, leased)
            return AppliedUpdate(record=record, events=events, outcome=transition.outcome, created=current is None)

        leased: list[Delivery] = []
        applied = await self._tx(tx)
        self._handover(leased)
        return applied

    async def record_activity(self, run_id: str, *, source: str, kind: str, data: dict[str, Any],
                              events: Sequence[tuple[str, dict[str, Any]]] = (), gathered_context: dict[str, Any] | None = None,
                              annotations: dict[str, Any] | None = None, media: dict[str, Any] | None = None) -> list[Event]:
        async def tx(conn: asyncpg.Connection) -> list[Event]:
            now = utcnow()
            record = await self._load(conn, run_id, lock=True)
            if record is None:
                raise StoreError(f"unknown workflow_run_id {run_id!r}")
            if gathered_context or annotations or media:
                record.gathered_context.update(gathered_context or {})
                record.annotations.update(annotations or {})
                record.media.update(media or {})
                record.updated_at = now
                await conn.execute(_UPSERT_CALL, *_record_params(record))
            await self._insert_timeline(conn, run_id, now, source=source, kind=kind, outcome="recorded", raw_status=None,
                                        state=None, sequence=None, data=data)
            emitted = [Event(type=name, workflow_run_id=run_id, occurred_at=now, data=event_data(record, extra))
                       for name, extra in events]
            await self._insert_events(conn, emitted, leased)
            return emitted

        leased: list[Delivery] = []
        emitted = await self._tx(tx)
        self._handover(leased)
        return emitted

    # -- reads ------------------------------------------------------------------------
    async def get_call(self, run_id: str) -> CallRecord | None:
        return await self._query(lambda conn: self._load(conn, run_id))

    async def get_timeline(self, run_id: str) -> list[TimelineEntry]:
        async def query(conn: asyncpg.Connection) -> list[TimelineEntry]:
            rows = await conn.fetch("SELECT * FROM call_timeline WHERE workflow_run_id = $1 ORDER BY id", run_id)
            return [TimelineEntry(id=r["id"], received_at=r["received_at"], source=r["source"], kind=r["kind"],
                                  outcome=r["outcome"], raw_status=r["raw_status"], state=r["state"],
                                  sequence=r["sequence"], data=r["data"]) for r in rows]

        return await self._query(query)

    async def list_calls(self, *, state: str | None = None, limit: int = 50, cursor: str | None = None) -> tuple[list[CallRecord], str | None]:
        limit = clamp_limit(limit)
        sql, params = page_query("SELECT * FROM calls", [("state", state)], keys=("created_at", "workflow_run_id"),
                                 cursor=cursor, limit=limit, dialect=POSTGRES)

        async def query(conn: asyncpg.Connection) -> tuple[list[CallRecord], str | None]:
            rows, next_cursor = split_page(await conn.fetch(sql, *params), limit, key="workflow_run_id", dialect=POSTGRES)
            return [_record(r) for r in rows], next_cursor

        return await self._query(query)

    async def list_events(self, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None) -> list[Event]:
        async def query(conn: asyncpg.Connection) -> list[Event]:
            if run_id is None:
                rows = await conn.fetch("SELECT * FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, clamp_limit(limit))
            else:
                rows = await conn.fetch("SELECT * FROM events WHERE seq > $1 AND workflow_run_id = $2 ORDER BY seq LIMIT $3",
                                        after_seq, run_id, clamp_limit(limit))
            return [_event(r) for r in rows]

        return await self._query(query)

    # -- deliveries -----------------------------------------------------------------------
    async def claim_deliveries(self, owner: str, *, now: datetime, lease_seconds: float,
                               capacity: Mapping[str, int], limit: int = 200) -> list[Delivery]:
        wanted = {name: n for name, n in capacity.items() if n > 0}
        if not wanted:
            return []

        async def tx(conn: asyncpg.Connection) -> list[Delivery]:
            rows = await conn.fetch(
                "SELECT d.id, d.subscription FROM deliveries d WHERE d.status = 'pending' AND d.next_attempt_at <= $1"
                " AND (d.lease_until IS NULL OR d.lease_until < $1) AND d.subscription = ANY($2::text[])"
                " AND (d.order_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending'"
                " AND p.subscription = d.subscription AND p.order_key = d.order_key AND p.event_seq < d.event_seq))"
                " ORDER BY d.next_attempt_at, d.event_seq LIMIT $3",
                now, list(wanted), limit * 4,
            )
            left = dict(wanted)
            picked = []
            for row in rows:
                if left.get(row["subscription"], 0) > 0 and len(picked) < limit:
                    left[row["subscription"]] -= 1
                    picked.append(row["id"])
            if not picked:
                return []
            # Lock only what this worker takes; rows another instance is claiming are skipped,
            # and the lease test is re-checked on the locked row versions.
            locked = await conn.fetch(
                "SELECT id FROM deliveries WHERE id = ANY($1::text[]) AND status = 'pending'"
                " AND (lease_until IS NULL OR lease_until < $2) FOR UPDATE SKIP LOCKED", picked, now,
            )
            ids = [row["id"] for row in locked]
            if not ids:
                return []
            await conn.execute("UPDATE deliveries SET lease_owner = $1, lease_until = $2 WHERE id = ANY($3::text[])",
                               owner, now + timedelta(seconds=lease_seconds), ids)
            claimed = await conn.fetch(_DELIVERY_SELECT + " WHERE d.id = ANY($1::text[]) ORDER BY d.next_attempt_at, d.event_seq", ids)
            return [_delivery(r, with_event=True) for r in claimed]

        return await self._tx(tx)

    async def finish_deliveries(self, owner: str, items: Sequence[tuple[Delivery, DeliveryResult]]) -> list[EndpointHealth]:
        if not items:
            return []
        dispatch = self.dispatch if self.dispatch is not None and self.dispatch.owner == owner else None

        async def tx(conn: asyncpg.Connection) -> list[EndpointHealth]:
            await conn.executemany(
                "INSERT INTO delivery_attempts (delivery_id, attempted_at, outcome, status, latency_ms, error, response, request)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [(d.id, r.attempt.attempted_at, r.attempt.outcome, r.attempt.status, r.attempt.latency_ms, r.attempt.error,
                  r.attempt.response, r.attempt.request) for d, r in items],
            )
            await conn.executemany(
                "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = COALESCE($2, next_attempt_at),"
                " lease_owner = NULL, lease_until = NULL, first_attempt_at = COALESCE(first_attempt_at, $3),"
                " last_attempt_at = $3, last_status = $4, last_error = $5, updated_at = $3 WHERE id = $6",
                [(r.status, r.next_attempt_at, r.attempt.attempted_at, r.attempt.status, r.attempt.error, d.id) for d, r in items],
            )
            for delivery, result in items:
                if result.gathered_context and delivery.workflow_run_id:
                    record = await self._load(conn, delivery.workflow_run_id, lock=True)
                    if record is not None:
                        record.gathered_context.update(result.gathered_context)
                        record.updated_at = result.attempt.attempted_at
                        await conn.execute(_UPSERT_CALL, *_record_params(record))
            for change in health_changes(items):
                await _apply_health_change(conn, change)
            rows = await conn.fetch("SELECT * FROM subscription_health WHERE subscription = ANY($1::text[])",
                                    list({d.subscription for d, _ in items}))
            health = {row["subscription"]: _health(row) for row in rows}
            if await self._next_in_order(conn, items, dispatch, leased):
                await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")  # a call's next event is due for a claim
            return [health.get(d.subscription) or EndpointHealth(d.subscription) for d, _ in items]

        leased: list[Delivery] = []
        healths = await self._tx(tx)
        self._handover(leased)
        return healths

    @staticmethod
    async def _next_in_order(conn: asyncpg.Connection, items: Sequence[tuple[Delivery, DeliveryResult]],
                             dispatch: DirectDispatch | None, leased: list[Delivery]) -> int:
        """The call's next pending delivery after each ordered one that reached its end: leased
        to `dispatch` when it is due, free and taken (added to `leased`); returns how many
        others are due for a claim."""
        queued = 0
        now = utcnow()
        taken: dict[str, int] = {}
        for delivery, result in items:
            if result.status == "pending" or delivery.order_key is None:
                continue
            row = await conn.fetchrow(
                _DELIVERY_SELECT + " WHERE d.status = 'pending' AND d.subscription = $1 AND d.order_key = $2"
                " ORDER BY d.event_seq LIMIT 1", delivery.subscription, delivery.order_key,
            )
            if row is None or row["next_attempt_at"] > now or (row["lease_until"] is not None and row["lease_until"] >= now):
                continue
            if dispatch is not None and dispatch.room(delivery.subscription) > taken.get(delivery.subscription, 0):
                # The lease test again on the row as it is now: another instance may be claiming it.
                status = await conn.execute(
                    "UPDATE deliveries SET lease_owner = $1, lease_until = $2 WHERE id = $3 AND status = 'pending'"
                    " AND (lease_until IS NULL OR lease_until < $4)",
                    dispatch.owner, now + timedelta(seconds=dispatch.lease_seconds), row["id"], now)
                if status.endswith(" 1"):
                    taken[delivery.subscription] = taken.get(delivery.subscription, 0) + 1
                    leased.append(_delivery(row, with_event=True))
            else:
                queued += 1
        return queued

    async def release_leases(self, owner: str, delivery_ids: Sequence[str] | None = None) -> int:
        async def tx(conn: asyncpg.Connection) -> int:
            sql = "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1"
            if delivery_ids is None:
                status = await conn.execute(sql, owner)
            else:
                status = await conn.execute(sql + " AND id = ANY($2::text[])", owner, list(delivery_ids))
            return int(status.split()[-1])

        return await self._tx(tx)

    async def list_deliveries(self, *, status: str | None = None, subscription: str | None = None,
                              run_id: str | None = None, limit: int = 50, cursor: str | None = None) -> tuple[list[Delivery], str | None]:
        limit = clamp_limit(limit)
        sql, params = page_query(
            _DELIVERY_VIEW, [("d.status", status), ("d.subscription", subscription), ("d.workflow_run_id", run_id)],
            keys=("d.created_at", "d.id"), cursor=cursor, limit=limit, dialect=POSTGRES,
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
                AttemptRecord(attempted_at=a["attempted_at"], outcome=a["outcome"], status=a["status"], latency_ms=a["latency_ms"],
                              error=a["error"], response=a["response"], request=a["request"])
                for a in await conn.fetch("SELECT * FROM delivery_attempts WHERE delivery_id = $1 ORDER BY id", delivery_id)
            ]
            return _delivery(row, with_event=True), attempts

        return await self._query(query)

    async def retry_delivery(self, delivery_id: str, *, now: datetime) -> Delivery | None:
        async def tx(conn: asyncpg.Connection) -> Delivery | None:
            row = await conn.fetchrow(
                "UPDATE deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL, next_attempt_at = $1,"
                " lease_owner = NULL, lease_until = NULL, updated_at = $1 WHERE id = $2 RETURNING *", now, delivery_id,
            )
            if row is not None:
                await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
            return None if row is None else _delivery(row)

        return await self._tx(tx)

    async def replay_deliveries(self, subscription: str, *, since: datetime, until: datetime, now: datetime,
                                matches: Callable[[str], bool], ordered: bool) -> int:
        async def tx(conn: asyncpg.Connection) -> int:
            rows = await conn.fetch(
                "SELECT e.seq, e.type, e.workflow_run_id, d.id AS delivery_id FROM events e"
                " LEFT JOIN deliveries d ON d.event_seq = e.seq AND d.subscription = $1"
                " WHERE e.occurred_at >= $2 AND e.occurred_at < $3 ORDER BY e.seq", subscription, since, until,
            )
            count = 0
            for row in rows:
                if row["delivery_id"] is not None:
                    await conn.execute(
                        "UPDATE deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL, next_attempt_at = $1,"
                        " lease_owner = NULL, lease_until = NULL, updated_at = $1 WHERE id = $2", now, row["delivery_id"],
                    )
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
                subscription, now if reason else None, reason,
            )
            if reason is None:
                await conn.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
                return []
            event = Event(type="webhook.endpoint_disabled", workflow_run_id=None, occurred_at=now,
                          data={"subscription": subscription, "reason": reason})
            await self._insert_events(conn, [event])
            return [event]

        return await self._tx(tx)

    async def outbox_stats(self, *, now: datetime) -> dict[str, Any]:
        row = await self._query(lambda conn: conn.fetchrow(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries WHERE status = 'pending'"))
        oldest = row["oldest"]
        return {"pending": row["n"], "oldest_pending_seconds": (now - oldest).total_seconds() if oldest else 0.0}
