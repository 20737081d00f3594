"""The SQLite `calls`, `call_timeline` and `seen_nonces` tables: provider callbacks written as
`plan_updates` plans them, gateway activities as `plan_activity` does, and their reads (a part
of `SQLiteStore`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.planner import AppliedUpdate, UpdateItem, lookup_keys, plan_updates
from gateway.calls.record import CallRecord
from gateway.calls.seed import CallSeed
from gateway.events.envelope import Event
from gateway.store.activity import plan_activity
from gateway.store.base import NONCE_PRUNE_EVERY, Delivery, TimelineEntry, clamp_limit, new_lease_id
from gateway.store.errors import StoreError, claim_lost
from gateway.store.paging import SQLITE, page_query, split_page
from gateway.store.sqlite_engine import Batched
from gateway.store.sqlite_events import SQLiteEvents, WriteTx, Written
from gateway.store.sqlite_rows import (
    UPSERT_CALL,
    insert_timeline,
    record_from_row,
    record_params,
    timeline_from_row,
    ts,
)


def load_call(conn: sqlite3.Connection, run_id: str | None) -> CallRecord | None:
    """The call of `run_id`, or None."""
    if run_id is None:
        return None
    row = conn.execute("SELECT * FROM calls WHERE workflow_run_id = ?", (run_id,)).fetchone()
    return None if row is None else record_from_row(row)


def _check_claim(conn: sqlite3.Connection, claim: tuple[str, int], run_id: str | None) -> None:
    """`ClaimLost` unless the contact `claim` names is still dialing `run_id` (see `CallSeed.claim`)."""
    if (
        conn.execute(
            "SELECT 1 FROM campaign_contacts WHERE campaign_id = ? AND position = ? AND status = 'dialing'"
            " AND workflow_run_id = ?",
            (claim[0], claim[1], run_id),
        ).fetchone()
        is None
    ):
        raise claim_lost(claim, run_id)


class SQLiteCalls(SQLiteEvents):
    """Calls and their timelines on the SQLite engine."""

    _nonces_pruned: datetime | None = None  # when `claim_nonce` last deleted the expired ones

    async def apply_update(
        self, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None
    ) -> AppliedUpdate:
        return self._notify(await self._write(self.apply_update_tx(update, run_id=run_id, seed=seed)))

    def apply_update_tx(
        self, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None, lease_id: str | None = None
    ) -> WriteTx[AppliedUpdate]:
        """`apply_update`'s transaction, whose value is the `AppliedUpdate`. Callbacks that
        wait together are written as one batch (`_apply_batch`); a campaign dial's, whose claim
        is checked, alone. Rows leased to the direct dispatch carry `lease_id` (a fresh one when
        None)."""
        item = (UpdateItem(update, run_id, seed), lease_id or new_lease_id())

        if seed is None or seed.claim is None:  # written together with the callbacks queued with it
            return Batched(self._apply_batch, item)
        return lambda conn: self._apply_batch(conn, [item])[0]  # a campaign dial's claim is checked alone

    def _apply_batch(
        self, conn: sqlite3.Connection, items: list[tuple[UpdateItem, str]]
    ) -> list[Written[AppliedUpdate]]:
        """Several `apply_update` transactions (update item, lease id), in order, written
        together: what each would have written alone (`plan_updates`), with one query per key
        to find the calls and one statement per table for all their rows (a callback's own
        statements and savepoint cost more than its rows).

        A later callback sees what an earlier one of the batch did to its call. The caller runs
        the batch in one savepoint and, if it fails, each callback alone."""
        now = self.now()
        updates = [update for update, _ in items]
        runs, _ = lookup_keys(updates)
        found: dict[str, CallRecord] = {}
        for start in range(0, len(runs), 500):
            part = runs[start : start + 500]
            for row in conn.execute(
                f"SELECT * FROM calls WHERE workflow_run_id IN ({','.join('?' * len(part))})", part
            ):
                found[row["workflow_run_id"]] = record_from_row(row)
        ids: dict[str, list[str]] = {}  # the provider's call ids of the callbacks whose run was not found
        for update, run_id, _ in updates:
            if update.provider_call_id and not (run_id and run_id in found):
                ids.setdefault(update.provider, []).append(update.provider_call_id)
        for provider, call_ids in ids.items():
            unique = list(dict.fromkeys(call_ids))
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                for row in conn.execute(
                    f"SELECT * FROM calls WHERE provider = ? AND provider_call_id IN ({','.join('?' * len(part))})",
                    [provider, *part],
                ):
                    found.setdefault(row["workflow_run_id"], record_from_row(row))
        plan = plan_updates(updates, found.values(), now=now)
        for item, applied in zip(updates, plan.applied, strict=True):
            if applied.created and item.seed is not None and item.seed.claim is not None:
                _check_claim(conn, item.seed.claim, item.run_id)
        conn.executemany(UPSERT_CALL, [record_params(record) for record in plan.changed.values()])
        insert_timeline(conn, plan.timeline)
        written = self._write_events(
            conn, plan.events, lease=True, lease_ids=[lease_id for _, lease_id in items], new_calls=plan.created
        )
        return [
            Written(applied, queued, leased) for applied, (queued, leased) in zip(plan.applied, written, strict=True)
        ]

    async def record_activity(self, run_id: str, **fields: Any) -> list[Event]:
        """See `Store.record_activity` (the keyword fields are `record_activity_tx`'s)."""
        return self._notify(await self._write(self.record_activity_tx(run_id, **fields)))

    def record_activity_tx(
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
        lease_id: str | None = None,
        session: str | None = None,
    ) -> WriteTx[list[Event]]:
        """`record_activity`'s transaction: the events (rows leased under `lease_id`)."""

        def tx(conn: sqlite3.Connection) -> Written[list[Event]]:
            now = self.now()
            record = load_call(conn, run_id)
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
                return Written([])
            if plan.record is not None:
                conn.execute(UPSERT_CALL, record_params(plan.record))
            insert_timeline(conn, [plan.timeline])
            leased: list[Delivery] = []
            queued = self._insert_events(conn, plan.events, leased, lease_id)
            return Written(plan.events, queued, leased)

        return tx

    async def claim_nonce(self, nonce: str, *, expires_at: datetime, now: datetime) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            at = ts(now)
            if self._nonces_pruned is None or now - self._nonces_pruned >= NONCE_PRUNE_EVERY:
                conn.execute("DELETE FROM seen_nonces WHERE expires_at < ?", (at,))
                self._nonces_pruned = now
            return (
                conn.execute(
                    "INSERT INTO seen_nonces (nonce, expires_at) VALUES (?, ?) ON CONFLICT (nonce) DO UPDATE"
                    " SET expires_at = excluded.expires_at WHERE seen_nonces.expires_at < ?",
                    (nonce, ts(expires_at), at),
                ).rowcount
                == 1
            )

        return await self._write(tx)

    # -- reads ------------------------------------------------------------------------
    async def get_call(self, run_id: str) -> CallRecord | None:
        return await self._read(lambda conn: load_call(conn, run_id))

    async def get_timeline(self, run_id: str) -> list[TimelineEntry]:
        def query(conn: sqlite3.Connection) -> list[TimelineEntry]:
            rows = conn.execute("SELECT * FROM call_timeline WHERE workflow_run_id = ? ORDER BY id", (run_id,))
            return [timeline_from_row(row) for row in rows]

        return await self._read(query)

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
            dialect=SQLITE,
        )

        def query(conn: sqlite3.Connection) -> tuple[list[CallRecord], str | None]:
            rows, next_cursor = split_page(
                conn.execute(sql, params).fetchall(), limit, key="workflow_run_id", dialect=SQLITE
            )
            return [record_from_row(row) for row in rows], next_cursor

        return await self._read(query)

    # -- deliveries -----------------------------------------------------------------------
