"""A media session's store writes (gateway.media.writes) against a real store whose writes are
held back (the store's latency, injected): bounded, in order, nothing dropped, coalesced only
where that loses nothing, flushed at the end and what is left logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.calls import CallState, CallUpdate
from gateway.media.writes import SessionWriter, flush_all
from postgres_support import open_store
from support import eventually

RUN = "run-w"


class Gate:
    """Holds every `record_activity` of `store` until opened."""

    def __init__(self, store):
        self.open = asyncio.Event()
        write = store.record_activity

        async def held(*args, **kwargs):
            await self.open.wait()
            return await write(*args, **kwargs)

        store.record_activity = held


def line(n):
    return {"data": {"role": "agent", "text": f"line {n}"}, "events": [("conversation.transcript", {"n": n})]}


@contextlib.asynccontextmanager
async def held_writer(tmp_path, **options):
    """A real store with the call, its writes held by a `Gate`, and a started `SessionWriter`."""
    async with open_store("sqlite", str(tmp_path / "gateway.db")) as store:
        await store.apply_update(CallUpdate(provider="twilio", provider_call_id="CA1", state=CallState.ANSWERED), run_id=RUN)
        gate = Gate(store)
        writer = SessionWriter(store, RUN, source=lambda kind: "agent", **options)
        writer.start()
        yield store, gate, writer


async def test_the_queue_is_bounded_and_the_agent_waits_for_room_losing_nothing(tmp_path):
    async with held_writer(tmp_path, max_queued=8) as (store, gate, writer):
        longest = 0

        async def agent():
            nonlocal longest
            for n in range(50):
                await writer.put("transcript", line(n))
                longest = max(longest, len(writer))

        producer = asyncio.ensure_future(agent())
        await eventually(lambda: len(writer) == 8)
        await asyncio.sleep(0.1)
        assert not producer.done() and len(writer) == 8  # it waits: the queue holds no more
        gate.open.set()
        await asyncio.wait_for(producer, 10)
        writer.put_nowait("media.ended", {"data": {"reason": "test"}})
        writer.close()
        assert await writer.wait(10)
        assert longest <= 8 and writer.waited >= 1
        timeline = await store.get_timeline(RUN)
        assert [t.data.get("text") for t in timeline if t.kind == "transcript"] == [f"line {n}" for n in range(50)]
        assert timeline[-1].kind == "media.ended"
        assert len([e for e in await store.list_events(run_id=RUN) if e.type == "conversation.transcript"]) == 50


async def test_only_adjacent_context_writes_coalesce_and_are_counted(tmp_path):
    async with held_writer(tmp_path, max_queued=2) as (store, gate, writer):
        await writer.put("transcript", line(0))  # taken by the writer, held at the store
        await eventually(lambda: len(writer) == 0)
        await writer.put("transcript", line(1))
        await writer.put("agent.context", {"data": {"keys": ["a"]}, "gathered_context": {"a": 1, "b": 1}})
        await writer.put("agent.context", {"data": {"keys": ["b"]}, "gathered_context": {"b": 2}})  # full: merges
        await writer.put("agent.context", {"data": {"keys": ["c"]}, "gathered_context": {"c": 3}})
        assert len(writer) == 2 and writer.coalesced == 2 and writer.waited == 0
        gate.open.set()
        writer.close()
        assert await writer.wait(10)
        kinds = [t.kind for t in await store.get_timeline(RUN)]
        assert kinds[-3:] == ["transcript", "transcript", "agent.context"]
        assert (await store.get_call(RUN)).gathered_context == {"a": 1, "b": 2, "c": 3}


async def test_writes_left_at_the_deadline_are_logged_and_flushed_at_shutdown(tmp_path, caplog):
    async with held_writer(tmp_path) as (store, gate, writer):
        for n in range(3):
            await writer.put("transcript", line(n))
        writer.put_nowait("media.ended", {"data": {"reason": "test"}})
        writer.close()
        with caplog.at_level(logging.ERROR, logger="gateway.media"):
            assert not await writer.wait(0.2)
        assert "transcript x3" in caplog.text and "media.ended x1" in caplog.text
        gate.open.set()  # the store answers again before the shutdown's deadline: everything is written
        await flush_all(10)
        kinds = [t.kind for t in await store.get_timeline(RUN)]
        assert kinds[-4:] == ["transcript", "transcript", "transcript", "media.ended"]
