"""The SQLite writer process shared by workers: two workers' stores (in this process, each with its
own delivery owner) send it their transactions over its Unix socket; each gets the leases its own
transactions took; control requests reach both through the relay; SIGUSR1 stops the writer."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import sqlite3
from pathlib import Path

from support import eventually

from gateway.calls import CallState, CallUpdate
from gateway.events.fanout import EventFanout, Route
from gateway.store.base import DirectDispatch
from gateway.store.sqlite import SQLiteStore
from gateway.workers.relay import RelayServer
from gateway.workers.shared_writer import run_shared_writer
from gateway.workers.writer_client import WorkerSQLiteStore


def ringing(n: int) -> CallUpdate:
    return CallUpdate(provider="twilio", provider_call_id=f"CA{n:032d}", raw_status="ringing", state=CallState.RINGING)


def listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    return sock


async def test_two_workers_share_one_writer_each_with_its_own_leases(tmp_path: Path, monkeypatch) -> None:
    async def not_here(*args, **kwargs):
        raise AssertionError("written in this process, not by the shared writer")

    monkeypatch.setattr(SQLiteStore, "apply_update", not_here)  # only the writer-less fallback runs it here
    db = str(tmp_path / "gateway.db")
    writer_listener, relay_listener = listener(tmp_path / "w.sock"), listener(tmp_path / "c.sock")
    relay = RelayServer(relay_listener)
    await relay.start()
    writer = multiprocessing.get_context("spawn").Process(
        target=run_shared_writer, args=({"path": db, "synchronous": "FULL"}, writer_listener)
    )
    writer.start()
    stores: dict[str, WorkerSQLiteStore] = {}
    taken: dict[str, list] = {"a": [], "b": []}
    controls: dict[str, list] = {"a": [], "b": []}
    try:
        for owner in ("a", "b"):
            store = WorkerSQLiteStore(db, writer_socket=str(tmp_path / "w.sock"), relay_socket=str(tmp_path / "c.sock"))
            store.set_fanout(EventFanout([Route("crm", ("call.*",))]))
            store.set_dispatch(
                DirectDispatch(owner=owner, lease_seconds=60, room=lambda name: 1000, deliver=taken[owner].extend)
            )
            store.set_control_handler(lambda run, action, data, owner=owner: controls[owner].append((run, action)))
            await store.open()
            assert store.writer is not None and store.writer.up
            stores[owner] = store
        owners = ["a", "b"] * 10
        await asyncio.gather(*(stores[o].apply_update(ringing(i), run_id=f"r{i}") for i, o in enumerate(owners)))
        with sqlite3.connect(db) as conn:
            leased = dict(conn.execute("SELECT workflow_run_id, lease_owner FROM deliveries").fetchall())
        assert leased == {f"r{i}": o for i, o in enumerate(owners)}  # each worker's rows leased to it
        for owner in ("a", "b"):
            assert sorted(d.workflow_run_id for d in taken[owner]) == sorted(
                f"r{i}" for i, o in enumerate(owners) if o == owner
            )
        await stores["a"].publish_control("r1", "clear")
        await eventually(lambda: controls["a"] == controls["b"] == [("r1", "clear")], what="both got the control")
        assert await stores["a"].hold_leadership("campaign-runner") is True
        assert await stores["b"].hold_leadership("campaign-runner") is False  # one lock file, two holders at most one
    finally:
        for store in stores.values():
            await store.close()
        writer.join(0.1)
        if writer.pid:
            os.kill(writer.pid, signal.SIGUSR1)
        writer.join(15)
        await relay.stop()
        writer_listener.close()
        relay_listener.close()
    assert writer.exitcode == 0
