"""`gateway calls list|show` and `gateway events tail`: the gateway's store, read as an operator would.

They open the store the configuration names (as `gateway deliveries` does), so they work whether or
not the gateway is running, on the same machine for SQLite or from anywhere for PostgreSQL. The
tail polls: new events in `seq` order, and deliveries whose status or attempt count changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from gateway import jsontext
from gateway.commands.output import CommandError, emit, emit_json, short_time
from gateway.config import GatewayConfig
from gateway.events.envelope import Event
from gateway.redact import redact_url
from gateway.store.base import Delivery, Store


@asynccontextmanager
async def opened_store(config: GatewayConfig) -> AsyncIterator[Store]:
    """The configured store, opened for reading (no writer process of its own)."""
    from gateway.store import StoreError, open_store_for

    store = open_store_for(config.store, writer_process=False)
    try:
        await store.open()
    except (StoreError, OSError) as exc:
        raise CommandError(f"cannot open the store {redact_url(config.store)}: {exc}", 1) from None
    try:
        yield store
    finally:
        await store.close()


def call_line(call: dict[str, Any]) -> str:
    """One call as a line of `gateway calls list`."""
    duration = f"{call['duration']}s" if call.get("duration") is not None else "-"
    return (
        f"{call['workflow_run_id']:<38} {call['state']:<10} {call.get('provider') or '-':<7} "
        f"{call.get('from') or '-'} -> {call.get('to') or '-':<14} {short_time(call.get('started_at') or call.get('created_at'))}"
        f"  {duration:>6}  {call.get('workflow_id') or '-'}/{call.get('user_id') or '-'}"
        + ("  voicemail" if call.get("voicemail") else "")
    )


def delivery_line(delivery: dict[str, Any]) -> str:
    """One delivery as a line (the same in `calls show`, `events tail` and `deliveries list`)."""
    return (
        f"{delivery['id']}  {delivery['status']:<9} {delivery['subscription']:<16} {delivery.get('event_type') or '-':<28} "
        f"run={delivery.get('workflow_run_id') or '-'} attempts={delivery['attempts']} "
        f"last={delivery.get('last_status') or delivery.get('last_error') or '-'}"
    )


def timeline_line(entry: dict[str, Any]) -> str:
    """One timeline entry as a line (`calls show`, `simulate`)."""
    return (
        f"{short_time(entry['received_at'])}  {entry['source']:<7} {entry['kind']:<16} "
        f"{entry.get('raw_status') or '':<12} {entry['outcome']}"
    )


def event_line(event: Event) -> str:
    """One event as a line of `gateway events tail`."""
    return f"{short_time(_iso(event))}  event     {event.type:<28} run={event.workflow_run_id or '-'}  ({event.id})"


def _iso(event: Event) -> str:
    timestamp: str = event.envelope()["timestamp"]
    return timestamp


async def calls_list(config: GatewayConfig, *, state: str | None, limit: int, as_json: bool) -> int:
    async with opened_store(config) as store:
        calls, cursor = await store.list_calls(state=state, limit=limit)
    rows = [call.to_dict() for call in calls]
    if as_json:
        emit_json({"calls": rows, "next_cursor": cursor})
        return 0
    for row in rows:
        emit(call_line(row))
    if not rows:
        emit("no calls" + (f" in state {state}" if state else "") + " (try: gateway simulate)")
    return 0


async def calls_show(config: GatewayConfig, run_id: str, *, as_json: bool) -> int:
    async with opened_store(config) as store:
        call = await store.get_call(run_id)
        if call is None:
            raise CommandError(f"no call with workflow_run_id {run_id!r} in {redact_url(config.store)}")
        timeline = [entry.to_dict() for entry in await store.get_timeline(run_id)]
        deliveries, _ = await store.list_deliveries(run_id=run_id, limit=200)
    record = {**call.to_dict(), "timeline": timeline, "deliveries": [d.to_dict() for d in deliveries]}
    if as_json:
        emit_json(record)
        return 0
    emit(f"call {record['workflow_run_id']}  {record['state']}" + ("  voicemail" if record.get("voicemail") else ""))
    for name, label in (
        ("provider", "provider"),
        ("provider_call_id", "provider call id"),
        ("direction", "direction"),
        ("from", "from"),
        ("to", "to"),
        ("workflow_id", "workflow"),
        ("user_id", "user"),
        ("started_at", "started"),
        ("answered_at", "answered"),
        ("ended_at", "ended"),
        ("duration", "duration"),
    ):
        if record.get(name) is not None:
            emit(f"  {label + ':':<18}{record[name]}")
    for name in ("initial_context", "gathered_context", "annotations"):
        if record.get(name):
            emit(f"  {name + ':':<18}{jsontext.dumps(record[name])}")
    emit("timeline:")
    for entry in timeline:
        emit("  " + timeline_line(entry))
    emit(f"deliveries ({len(record['deliveries'])}):")
    for delivery in record["deliveries"]:
        emit("  " + delivery_line(delivery))
    return 0


async def last_seq(store: Store) -> int:
    """The highest event `seq` in the store (0 when empty), found with O(log n) one-row reads."""

    async def beyond(seq: int) -> bool:
        return bool(await store.list_events(after_seq=seq, limit=1))

    low, high = 0, 1
    while await beyond(high):
        low, high = high, high * 2
    if not await beyond(low):
        return low
    while high - low > 1:  # events exist after `low`, none after `high`
        middle = (low + high) // 2
        low, high = (middle, high) if await beyond(middle) else (low, middle)
    return high


class DeliveryWatch:
    """Which deliveries changed since the last look: a new id, or a new status or attempt count."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, int]] = {}

    def changed(self, deliveries: list[Delivery]) -> list[Delivery]:
        out = []
        for delivery in reversed(deliveries):  # oldest first
            key = (delivery.status, delivery.attempts)
            if self.seen.get(delivery.id) != key:
                self.seen[delivery.id] = key
                out.append(delivery)
        return out


async def events_tail(
    config: GatewayConfig,
    *,
    run_id: str | None,
    last: int,
    as_json: bool,
    poll: float,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Follow events and deliveries until interrupted (or `stop()`)."""
    async with opened_store(config) as store:
        after = max(0, await last_seq(store) - last)
        watch = DeliveryWatch()
        recent, _ = await store.list_deliveries(run_id=run_id, limit=200)
        if not last:
            watch.changed(recent)  # already there: only changes from now on are shown
        if not as_json:
            emit(f"following events and deliveries in {redact_url(config.store)} (Ctrl-C to stop)")
        while not stop():
            events = await store.list_events(after_seq=after, limit=500, run_id=run_id)
            for event in events:
                after = max(after, event.seq)
                if as_json:
                    emit_json({"kind": "event", **event.envelope(), "seq": event.seq})
                else:
                    emit(event_line(event))
            deliveries, _ = await store.list_deliveries(run_id=run_id, limit=200)
            for delivery in watch.changed(deliveries):
                row = delivery.to_dict()
                if as_json:
                    emit_json({"kind": "delivery", **row})
                else:
                    emit(f"{short_time(row['updated_at'])}  delivery  {delivery_line(row)}")
            if len(events) < 500:
                await asyncio.sleep(poll)
    return 0
