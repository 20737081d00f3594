"""The PostgreSQL `calls`, `call_timeline` and `seen_nonces` tables: provider callbacks
written as `plan_updates` plans them (batched by `GroupCommit`), gateway activities as
`plan_activity` does, and their reads (a part of `PostgresStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.planner import BatchPlan, UpdateItem, plan_updates
from gateway.calls.record import CallRecord
from gateway.events.envelope import Event
from gateway.store.activity import plan_activity
from gateway.store.base import (
    NONCE_PRUNE_EVERY,
    AppliedUpdate,
    CallSeed,
    Delivery,
    StoreError,
    StoreWiring,
    TimelineEntry,
    claim_lost,
    clamp_limit,
)
from gateway.store.group_commit import GroupCommit, MaybeCommitted
from gateway.store.paging import POSTGRES, page_query, split_page
from gateway.store.postgres_events import PostgresEvents
from gateway.store.postgres_pool import Conn
from gateway.store.postgres_rows import (
    UPSERT_CALL,
    record_from_row,
    record_params,
    timeline_row,
)

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


async def load_call(conn: Conn, run_id: str | None, *, lock: bool = False) -> CallRecord | None:
    """The call of `run_id` (row-locked with `lock`), or None."""
    if run_id is None:
        return None
    row = await conn.fetchrow(
        "SELECT * FROM calls WHERE workflow_run_id = $1" + (" FOR UPDATE" if lock else ""), run_id
    )
    return None if row is None else record_from_row(row)


async def lock_runs(conn: Conn, run_ids: Sequence[str]) -> None:
    """Take the calls' transaction-scoped run locks, in sorted order (every writer of a call's
    events holds its lock: callbacks, media activity, replays)."""
    keys = [(f"run:{run_id}",) for run_id in sorted(set(run_ids))]
    if len(keys) == 1:  # a callback's one lock: the plain statement it always was
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", *keys[0])
    elif keys:
        await conn.executemany("SELECT pg_advisory_xact_lock(hashtext($1))", keys)


class PostgresCalls(PostgresEvents):
    """Calls and their timelines on the PostgreSQL pool."""

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10, wiring: StoreWiring | None = None) -> None:
        super().__init__(url, min_size=min_size, max_size=max_size, wiring=wiring)
        self._nonces_pruned: datetime | None = None
        # A callback alone goes the batch's way too (fewer round trips); `_apply_one` is the
        # way of each callback of a batch that failed.
        self._callbacks: GroupCommit[tuple[CallUpdate, str | None, CallSeed | None], AppliedUpdate] = GroupCommit(
            self._apply_batch, self._apply_one, min_batch=1
        )

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

        async def tx(conn: Conn) -> AppliedUpdate:
            # Serialize every writer of this call, on every instance, before reading it.
            if update.provider_call_id:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"{update.provider}:{update.provider_call_id}"
                )
            if run_id:
                await lock_runs(conn, [run_id])
            now = self.now()
            current = await load_call(conn, run_id, lock=True) if run_id else None
            if current is None and update.provider_call_id:
                row = await conn.fetchrow(
                    "SELECT * FROM calls WHERE provider = $1 AND provider_call_id = $2 FOR UPDATE",
                    update.provider,
                    update.provider_call_id,
                )
                current = None if row is None else record_from_row(row)
            # Under the run's lock, as `release_campaign_claim` checks for the record: one of
            # the two wins, so a released claim is never dialed.
            if (
                current is None
                and seed is not None
                and seed.claim is not None
                and await conn.fetchval(
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
        conn: Conn,
        items: list[tuple[CallUpdate, str | None, CallSeed | None]],
        leased: list[Delivery],
    ) -> list[AppliedUpdate]:
        """`_apply_batch`'s statements, inside its transaction."""
        calls = sorted({f"{u.provider}:{u.provider_call_id}" for u, _, _ in items if u.provider_call_id})
        runs = sorted({run_id for _, run_id, _ in items if run_id})
        await conn.execute(_LOCK_IN_ORDER, calls + [f"run:{run_id}" for run_id in runs])
        now = self.now()
        pairs = list(dict.fromkeys((u.provider, u.provider_call_id) for u, _, _ in items if u.provider_call_id))
        found = {
            row["workflow_run_id"]: record_from_row(row)
            for row in await conn.fetch(_FIND_CALLS, runs, [p for p, _ in pairs], [c for _, c in pairs])
        }
        plan = plan_updates([UpdateItem(*item) for item in items], found.values(), now=now)
        await self._write_plan(conn, plan, leased)
        return plan.applied

    async def _write_plan(self, conn: Conn, plan: BatchPlan, leased: list[Delivery]) -> None:
        """Write what `plan_updates` planned: the calls it changed, its events with their
        delivery rows, and its timeline entries."""
        await conn.executemany(UPSERT_CALL, [record_params(record) for record in plan.changed.values()])
        await self._write_events(
            conn,
            plan.events,
            leased,
            new_calls=plan.created,
            timeline=[timeline_row(entry) for entry in plan.timeline],
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
        async def tx(conn: Conn) -> list[Event]:
            await lock_runs(conn, [run_id])  # as a callback of this call, and a replay, do
            now = self.now()
            record = await load_call(conn, run_id, lock=True)
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
                await conn.execute(UPSERT_CALL, *record_params(plan.record))
            await self._write_events(conn, [plan.events], leased, timeline=[timeline_row(plan.timeline)])
            return plan.events

        leased: list[Delivery] = []
        emitted = await self._tx(tx)
        self._handover(leased)
        return emitted

    async def claim_nonce(self, nonce: str, *, expires_at: datetime, now: datetime) -> bool:
        async def tx(conn: Conn) -> bool:
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
            return bool(inserted == 1)

        return await self._tx(tx)

    async def get_call(self, run_id: str) -> CallRecord | None:
        return await self._query(lambda conn: load_call(conn, run_id))

    async def get_timeline(self, run_id: str) -> list[TimelineEntry]:
        async def query(conn: Conn) -> list[TimelineEntry]:
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

        async def query(conn: Conn) -> tuple[list[CallRecord], str | None]:
            rows, next_cursor = split_page(
                await conn.fetch(sql, *params), limit, key="workflow_run_id", dialect=POSTGRES
            )
            return [record_from_row(r) for r in rows], next_cursor

        return await self._query(query)
