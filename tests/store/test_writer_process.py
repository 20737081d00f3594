"""`sqlite:///...?writer=process`: the hot transactions run in a writer process. What the
gateway acknowledged survives the writer's death; the gateway writes itself meanwhile and the
writer is started again; routing changes reach it; it ends with the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from support import eventually

from gateway.calls import CallState, CallUpdate
from gateway.events.fanout import EventFanout, Route
from gateway.store import StoreError, open_store_for
from gateway.store.base import DirectDispatch
from gateway.store.writer_process import WriterProcessStore


def ringing(n: int) -> CallUpdate:
    return CallUpdate(provider="twilio", provider_call_id=f"CA{n:032d}", raw_status="ringing", state=CallState.RINGING)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_the_url_option_opens_a_writer_process_and_it_writes(tmp_path: Path) -> None:
    store = open_store_for(f"sqlite:///{tmp_path / 'gateway.db'}?writer=process")
    assert isinstance(store, WriterProcessStore)
    taken: list = []
    store.set_fanout(EventFanout([Route("crm", ("call.*",))]))
    store.set_dispatch(DirectDispatch(owner="w", lease_seconds=60, room=lambda name: 1000, deliver=taken.extend))
    await store.open()
    try:
        assert store.writer_pid not in (None, os.getpid())
        applied = await store.apply_update(ringing(1), run_id="r1")
        assert applied.created and [e.type for e in applied.events] == ["call.ringing"]
        (delivery,) = taken  # leased in the writer process, handed to this process's dispatch
        assert delivery.event.type == "call.ringing"
        assert (await store.get_call("r1")).state == CallState.RINGING  # read here, written there
    finally:
        await store.close()


async def test_routing_set_after_open_reaches_the_running_writer(tmp_path: Path) -> None:
    store = WriterProcessStore(str(tmp_path / "gateway.db"))
    store.set_fanout(EventFanout([]))
    await store.open()
    try:
        await store.apply_update(ringing(1), run_id="r1")
        store.set_fanout(EventFanout([Route("late", ("call.*",))]))
        await store.apply_update(ringing(2), run_id="r2")
        rows, _ = await store.list_deliveries(limit=10)
        assert [(d.workflow_run_id, d.subscription) for d in rows] == [("r2", "late")]
    finally:
        await store.close()


async def test_a_killed_writer_loses_nothing_acknowledged_and_comes_back(tmp_path: Path) -> None:
    store = WriterProcessStore(str(tmp_path / "gateway.db"))
    store.set_fanout(EventFanout([Route("crm", ("call.*",))]))
    await store.open()
    try:
        first = store.writer_pid
        acknowledged: list[str] = []
        refused = 0

        async def callback(n: int) -> None:
            nonlocal refused
            try:
                await store.apply_update(ringing(n), run_id=f"r{n}")
            except StoreError:
                refused += 1  # unknown whether it was written: the provider sends it again
            else:
                acknowledged.append(f"r{n}")

        async def load() -> None:
            for wave in range(40):
                await asyncio.gather(*(callback(wave * 25 + k) for k in range(25)))

        loading = asyncio.ensure_future(load())
        await eventually(lambda: len(acknowledged) > 100, what="callbacks to flow")
        os.kill(first, signal.SIGKILL)
        await loading
        assert len(acknowledged) + refused == 1000
        for run in acknowledged:
            assert await store.get_call(run) is not None, run  # acknowledged means stored
        # The gateway wrote while the writer was down, and a new writer took over.
        second = await eventually(lambda: store.writer_pid not in (None, first) and store.writer.up and store.writer_pid,
                             what="the writer process to be started again")
        await store.apply_update(ringing(5000), run_id="after")
        assert await store.get_call("after") is not None
        assert second != first and gone(first)
    finally:
        await store.close()
    assert gone(second)  # closing the store ended it


def test_the_writer_ends_with_a_gateway_that_was_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, os, sys
        from gateway.events.fanout import EventFanout
        from gateway.store.writer_process import WriterProcessStore

        async def main():
            store = WriterProcessStore({str(tmp_path / 'gateway.db')!r})
            store.set_fanout(EventFanout([]))
            await store.open()
            print(store.writer_pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        writer = int(proc.stdout.readline())
        assert not gone(writer)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while not gone(writer) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(writer)  # its pipe reached end-of-file
    finally:
        proc.kill()
        proc.wait()
