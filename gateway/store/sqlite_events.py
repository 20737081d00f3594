"""The `events` table and the delivery rows each event fans out to: written by every SQLite
transaction that emits events (callbacks, activities, campaigns, endpoint changes), leasing to
the direct dispatch the rows it takes (`DirectDispatch`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, NamedTuple, TypeVar

from gateway.events.envelope import Event, new_event_id
from gateway.store.base import Delivery, DirectDispatch, Store, StoreWiring, clamp_limit, new_lease_id
from gateway.store.sqlite_engine import SQLiteEngine
from gateway.store.sqlite_rows import INSERT_DELIVERY, event_from_row, ts

R = TypeVar("R")


@dataclass(slots=True)
class Written(Generic[R]):
    """What a write transaction returns to its caller: its value, how many delivery rows it
    queued for a claim (the claimers are woken), and the rows it leased to the direct dispatch
    (handed to it), both once the transaction committed (`SQLiteEvents._notify`)."""

    value: R
    queued: int = 0
    leased: Sequence[Delivery] = ()


WriteTx = Callable[[sqlite3.Connection], Written[R]]
"""A write transaction whose caller gets `Written[R]` (a `*_tx` the writer process runs too)."""


class Fanned(NamedTuple):
    """One transaction's events written: the delivery rows queued for a claim, and those leased
    to the direct dispatch."""

    queued: int
    leased: list[Delivery]


class SQLiteEvents(SQLiteEngine, Store):
    """Events and their delivery rows on the SQLite engine (a part of `SQLiteStore`)."""

    def __init__(self, path: str, *, synchronous: str = "FULL", wiring: StoreWiring | None = None) -> None:
        SQLiteEngine.__init__(self, path, synchronous=synchronous)
        Store.__init__(self, wiring=wiring)

    def _notify(self, written: Written[R]) -> R:
        """After a commit: hand rows leased to the direct dispatch over, and wake the claimers
        when rows were queued for them."""
        if written.leased:
            assert self.dispatch is not None
            self.dispatch.deliver(list(written.leased))
        if written.queued:
            self.on_deliveries()
        return written.value

    def _has_room(self, dispatch: DirectDispatch, subscription: str) -> bool:
        """Whether the direct dispatch takes one more row of `subscription`, counting the rows
        this group commit leased it already (it gets them only after the commit)."""
        return dispatch.room(subscription) > self._leases.get(subscription, 0)

    def _insert_events(
        self,
        conn: sqlite3.Connection,
        events: list[Event],
        leased: list[Delivery] | None = None,
        lease_id: str | None = None,
    ) -> int:
        """Write events and, in the same transaction, one delivery row per subscription; returns
        how many rows wait for a claim. Given a `leased` list, the rows the direct dispatch takes
        are leased to it (under `lease_id`) and added there (see `_write_events`)."""
        ((queued, taken),) = self._write_events(
            conn, [events], lease=leased is not None, lease_ids=[lease_id or new_lease_id()]
        )
        if leased is not None:
            leased += taken
        return queued

    def _write_events(
        self,
        conn: sqlite3.Connection,
        groups: Sequence[Sequence[Event]],
        *,
        lease: bool,
        lease_ids: Sequence[str],
        new_calls: Container[str] = (),
    ) -> list[Fanned]:
        """Write the events of each group (one transaction's, in order) and one delivery row per
        subscription, one statement per table; returns (rows queued for a claim, rows leased)
        per group.

        With `lease`, a row the direct dispatch takes (it has room for the subscription, and no
        earlier event of the call is still pending for it) is leased to it, under the group's
        lease id (`lease_ids`, one per group: a writer process's caller that never gets the
        answer releases that lease by its id). Sequence numbers are
        given here: the writer holds the write lock. `new_calls` are calls these groups made,
        which cannot have deliveries pending from before (no need to look)."""
        if not any(groups):
            return [Fanned(0, []) for _ in groups]
        dispatch = self.dispatch if lease else None
        lease_until = ts(self.now() + timedelta(seconds=dispatch.lease_seconds)) if dispatch is not None else None
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        event_rows: list[tuple[Any, ...]] = []
        delivery_rows: list[tuple[Any, ...]] = []
        waiting: set[tuple[str, str]] = set()  # (subscription, call) that has a pending row now
        out: list[Fanned] = []
        for events, lease_id in zip(groups, lease_ids, strict=True):
            queued, leased = 0, list[Delivery]()
            for event in events:
                seq += 1
                event.seq = seq
                run, at = event.workflow_run_id, ts(event.occurred_at)
                event_rows.append((seq, event.id, event.type, run, at, event.data_json()))
                for subscription, ordered in self.fanout(event):
                    key = run if ordered else None
                    take = dispatch is not None and self._has_room(dispatch, subscription)
                    if key is not None:
                        if take and (
                            (subscription, key) in waiting
                            or (key not in new_calls and _has_pending(conn, subscription, key))
                        ):
                            take = False
                        waiting.add((subscription, key))
                    delivery_id = new_event_id("msg")
                    if take:
                        assert dispatch is not None
                        self._leases[subscription] = self._leases.get(subscription, 0) + 1
                        delivery_rows.append(
                            (
                                delivery_id,
                                seq,
                                subscription,
                                run,
                                key,
                                at,
                                dispatch.owner,
                                lease_until,
                                lease_id,
                                at,
                                at,
                            )
                        )
                        leased.append(
                            Delivery(
                                id=delivery_id,
                                event_seq=seq,
                                subscription=subscription,
                                workflow_run_id=run,
                                status="pending",
                                attempts=0,
                                next_attempt_at=event.occurred_at,
                                created_at=event.occurred_at,
                                updated_at=event.occurred_at,
                                event=event,
                                order_key=key,
                                lease_id=lease_id,
                            )
                        )
                    else:
                        delivery_rows.append((delivery_id, seq, subscription, run, key, at, None, None, None, at, at))
                        queued += 1
            out.append(Fanned(queued, leased))
        conn.executemany(
            "INSERT INTO events (seq, id, type, workflow_run_id, occurred_at, data) VALUES (?, ?, ?, ?, ?, ?)",
            event_rows,
        )
        conn.executemany(INSERT_DELIVERY, delivery_rows)
        return out

    @staticmethod
    def _insert_delivery(
        conn: sqlite3.Connection, event_seq: int, subscription: str, run_id: str | None, ordered: bool, now: datetime
    ) -> None:
        """A pending delivery row, for a claim."""
        at = ts(now)
        conn.execute(
            INSERT_DELIVERY,
            (
                new_event_id("msg"),
                event_seq,
                subscription,
                run_id,
                run_id if ordered else None,
                at,
                None,
                None,
                None,
                at,
                at,
            ),
        )

    async def list_events(self, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None) -> list[Event]:
        def query(conn: sqlite3.Connection) -> list[Event]:
            sql = "SELECT * FROM events WHERE seq > ?"
            params: list[Any] = [after_seq]
            if run_id is not None:
                sql += " AND workflow_run_id = ?"
                params.append(run_id)
            sql += " ORDER BY seq LIMIT ?"
            params.append(clamp_limit(limit))
            return [event_from_row(row) for row in conn.execute(sql, params).fetchall()]

        return await self._read(query)


def _has_pending(conn: sqlite3.Connection, subscription: str, order_key: str) -> bool:
    """Whether the call has a delivery still pending for the subscription (its next one waits)."""
    return (
        conn.execute(
            "SELECT 1 FROM deliveries WHERE status = 'pending' AND subscription = ? AND order_key = ? LIMIT 1",
            (subscription, order_key),
        ).fetchone()
        is not None
    )
