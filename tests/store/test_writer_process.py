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
from datetime import datetime, timezone
from pathlib import Path

import pytest
from support import eventually

from gateway.calls import CallState, CallUpdate
from gateway.events.fanout import EventFanout, Route
from gateway.store import StoreError, open_store_for
from gateway.store.base import AttemptRecord, DeliveryResult, DirectDispatch
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


class DyingWriterStore(WriterProcessStore):
    """A writer process that dies right after committing its first `die_after` transaction,
    before answering (see `ipc_children.writer_dying_after_commit`)."""

    die_after = "apply_update"

    def writer_target(self):
        from ipc_children import writer_dying_after_commit

        _, setup = super().writer_target()
        return writer_dying_after_commit, {**setup, "die_after": self.die_after}


def _ok() -> DeliveryResult:
    return DeliveryResult("succeeded", AttemptRecord(datetime.now(timezone.utc), "success", status=200, request={}),
                          endpoint_ok=True)


async def test_rows_leased_by_a_commit_whose_answer_was_lost_are_due_again_at_once(tmp_path: Path) -> None:
    """The writer commits a callback, leasing its delivery to the worker for 60 s, and dies
    before answering: the callback gets its 503, and the row (which would otherwise wait a
    minute, holding back the call's next event) is released and claimable at once."""
    store = DyingWriterStore(str(tmp_path / "gateway.db"))
    taken: list = []
    store.set_fanout(EventFanout([Route("crm", ("call.*",))]))
    store.set_dispatch(DirectDispatch(owner="w", lease_seconds=60, room=lambda name: 1000, deliver=taken.extend))
    await store.open()
    try:
        with pytest.raises(StoreError, match="ended before it answered"):
            await store.apply_update(ringing(1), run_id="r1")
        assert taken == []  # the worker never heard of the lease
        now = datetime.now(timezone.utc)
        (row,) = await store.claim_deliveries("w", now=now, lease_seconds=60, capacity={"crm": 5})
        assert row.event.type == "call.ringing" and row.workflow_run_id == "r1"  # committed, and free
        await store.finish_delivery(row, "w", _ok())
        # The call's next event flows behind it (written here or by the writer started again).
        completed = CallUpdate(provider="twilio", provider_call_id=f"CA{1:032d}", raw_status="completed", state=CallState.COMPLETED)
        await store.apply_update(completed, run_id="r1")
        assert [d.event.type for d in taken] == ["call.completed"]
    finally:
        await store.close()


async def test_a_finish_batch_whose_answer_was_lost_and_is_written_again_records_each_attempt_once(tmp_path: Path) -> None:
    store = DyingWriterStore(str(tmp_path / "gateway.db"))
    store.die_after = "finish_deliveries"
    taken: list = []
    store.set_fanout(EventFanout([Route("crm", ("call.*",), ordered=False)]))
    store.set_dispatch(DirectDispatch(owner="w", lease_seconds=60, room=lambda name: 1000, deliver=taken.extend))
    await store.open()
    try:
        for n in range(2):
            await store.apply_update(ringing(n), run_id=f"r{n}")
        items = [(delivery, _ok()) for delivery in taken]
        with pytest.raises(StoreError, match="ended before it answered"):
            await store.finish_deliveries("w", items)
        # What the worker does then: each one again, alone.
        healths = [await store.finish_delivery(delivery, "w", result) for delivery, result in items]
        assert [h.consecutive_failures for h in healths] == [0, 0]  # written (before), not lost: no late finish
        for delivery, _ in items:
            found, attempts = await store.get_delivery(delivery.id)
            assert found.status == "succeeded" and found.attempts == 1 and len(attempts) == 1
    finally:
        await store.close()
