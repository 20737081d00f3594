"""A real `gateway serve` with `workers: 2` (one port, two worker processes), on SQLite (one
shared writer process, the control relay) and on PostgreSQL (each worker connects; NOTIFY).

Which worker took what is read from the log: in worker mode every line carries the worker's pid.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import re
import signal
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from support import API_KEY, TWILIO_SID, Receiver, base_config, twilio_signature, twilio_status_callback, wait_until

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
STARTED = re.compile(r"worker (\d+) started: pid (\d+)")


def log_lines(proc: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]


def ready_pids(proc: Any) -> set[int]:
    """The pids of the workers whose app has started (now or earlier)."""
    return {
        line["pid"] for line in log_lines(proc) if line["message"] == "Application startup complete." and "pid" in line
    }


def started_workers(proc: Any) -> list[tuple[int, int]]:
    """(index, pid) of every worker start logged, in order."""
    return [(int(m[1]), int(m[2])) for line in log_lines(proc) if (m := STARTED.fullmatch(line["message"]))]


def live_pids(proc: Any) -> set[int]:
    """The workers now running: the latest start of each index whose app is up."""
    latest = dict(started_workers(proc))
    return {pid for pid in latest.values() if pid in ready_pids(proc)}


def start_workers(gateway_process: Any, config: dict[str, Any]) -> tuple[Any, set[int]]:
    proc = gateway_process(config)
    pids = wait_until(lambda: len(live_pids(proc)) == 2 and live_pids(proc), 30, "both workers up")
    assert proc.proc.pid not in pids
    return proc, pids


def metric(proc: Any, name: str) -> float:
    text = httpx.get(proc.url + "/metrics", timeout=5).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found[1]) if found else 0.0


class Stream:
    """A Twilio media stream opened on the gateway (whichever worker accepts it)."""

    def __init__(self, proc: Any, run_id: str) -> None:
        self.proc, self.run_id = proc, run_id
        self.call_sid = "CA" + run_id.encode().hex().ljust(32, "0")[:32]
        self.sid = "MZ" + self.call_sid[2:]
        self.ws: Any = None

    async def open(self) -> Stream:
        from websockets.asyncio.client import connect

        params = {
            "CallSid": self.call_sid,
            "AccountSid": TWILIO_SID,
            "CallStatus": "in-progress",
            "Direction": "inbound",
        }
        url = self.proc.url + f"/api/v1/telephony/webhook/wf/u/{self.run_id}"
        answer = httpx.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
        stream = ET.fromstring(answer.text).find("./Connect/Stream")
        ws_url = stream.get("url")
        custom = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        signature = twilio_signature(ws_url, {})
        self.ws = await connect(ws_url, additional_headers={"X-Twilio-Signature": signature}, proxy=None)
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {"streamSid": self.sid, "customParameters": custom}
        await self.ws.send(json.dumps({"event": "start", "streamSid": self.sid, "start": start}))
        await self.echo()
        return self

    async def echo(self) -> None:
        """One frame out; its echo (the built-in echo agent) back."""
        payload = base64.b64encode(b"\xff" * 160).decode()
        await self.ws.send(json.dumps({"event": "media", "streamSid": self.sid, "media": {"payload": payload}}))
        assert json.loads(await asyncio.wait_for(self.ws.recv(), 10))["event"] == "media"

    async def owner(self) -> int:
        """The pid of the worker that owns this call's media (the call record names its instance)."""
        for _ in range(200):
            record = httpx.get(self.proc.url + f"/api/v1/calls/{self.run_id}", headers=HEADERS).json()
            if record["media"].get("instance"):
                return int(record["media"]["instance"].split(":")[1])
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.run_id}: no media instance recorded")


async def open_on_both(proc: Any, pids: set[int], prefix: str, most: int = 40) -> dict[str, tuple[Stream, int]]:
    """Open streams (each a new connection) until both workers own at least two."""
    streams: dict[str, tuple[Stream, int]] = {}
    for i in range(most):
        stream = await Stream(proc, f"{prefix}-{i}").open()
        streams[stream.run_id] = (stream, await stream.owner())
        owners = [owner for _, owner in streams.values()]
        if all(owners.count(pid) >= 2 for pid in pids):
            return streams
    raise AssertionError(f"{most} media sockets did not land on both workers: {owners}")


async def test_media_lands_on_both_workers_and_control_reaches_each_owner(gateway_process, tmp_path, store_config):
    proc, pids = start_workers(gateway_process, base_config(tmp_path, workers=2, **store_config))
    streams = await open_on_both(proc, pids, "media")
    assert {owner for _, owner in streams.values()} == pids

    # /metrics on any worker is the sum: every live media session, whichever worker has it.
    for _ in range(4):  # several scrapes, each on a new connection (either worker answers)
        await asyncio.to_thread(
            wait_until,
            lambda: metric(proc, "gateway_media_sessions_active") == len(streams),
            15,
            "media sessions summed",
        )

    # A clear asked of either worker reaches the owner of each call's media.
    for run_id, (stream, owner) in streams.items():
        response = httpx.post(proc.url + f"/api/v1/calls/{run_id}/clear", headers=HEADERS)
        assert response.status_code == 202 and int(response.json()["instance"].split(":")[1]) == owner
        assert json.loads(await asyncio.wait_for(stream.ws.recv(), 10)) == {"event": "clear", "streamSid": stream.sid}
    handled = [line for line in log_lines(proc) if line["message"].startswith("control clear for run=")]
    for run_id, (_, owner) in streams.items():
        assert [line["pid"] for line in handled if f"run={run_id} " in line["message"]] == [owner]

    # The provider's `completed` (taken by either worker) hangs up the media on its owner.
    from websockets.exceptions import ConnectionClosed

    for run_id, (stream, _) in streams.items():
        twilio_status_callback(proc, run_id, "completed", sid=stream.call_sid)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(stream.ws.recv(), 10)
    await asyncio.to_thread(wait_until, lambda: metric(proc, "gateway_media_sessions_active") == 0, 15, "no media left")


def _subscription(receiver: Receiver) -> dict[str, Any]:
    return {
        "name": "crm",
        "events": ["call.*"],
        "url": receiver.url + "/hooks/{{workflow_run_id}}",
        "signing": {"scheme": "standard", "secrets": [WHSEC]},
        "allow_networks": ["127.0.0.0/8"],
        "timeout": 3,
    }


def _delivered(receiver: Receiver) -> list[tuple[str, str, str]]:
    return [
        (json.loads(r["body"])["workflow_run_id"], json.loads(r["body"])["type"], r["headers"]["webhook-id"])
        for r in receiver.requests
    ]


def test_callbacks_through_both_workers_deliver_each_event_once_in_order(gateway_process, tmp_path, store_config):
    with Receiver() as receiver:
        config = base_config(tmp_path, workers=2, webhooks=[_subscription(receiver)], **store_config)
        proc, pids = start_workers(gateway_process, config)
        runs = [f"run-{i}" for i in range(16)]
        steps = ["initiated", "ringing", "in-progress", "completed"]
        with ThreadPoolExecutor(8) as pool:
            for status in steps:  # every callback on a new connection: either worker takes it
                list(pool.map(lambda run: twilio_status_callback(proc, run, status), runs))
        kinds = ["call.initiated", "call.ringing", "call.answered", "call.completed", "call.ended"]
        wait_until(lambda: len(receiver.requests) >= len(runs) * len(kinds), 30, "every delivery")
        time.sleep(0.5)  # a duplicate would arrive about now
        got = _delivered(receiver)
        assert sorted((run, kind) for run, kind, _ in got) == sorted((run, kind) for run in runs for kind in kinds)
        assert len({wid for _, _, wid in got}) == len(got)
        for run in runs:
            assert [kind for r, kind, _ in got if r == run] == kinds
        took = {line["pid"] for line in log_lines(proc) if "/status-callback/" in line["message"] and "pid" in line}
        assert took == pids  # both workers took callbacks


async def test_a_killed_worker_is_restarted_while_the_other_keeps_its_calls(gateway_process, tmp_path, store_config):
    slow = {"delay": 0.0}
    with Receiver(lambda n, path: (200, {}, b"{}", slow["delay"])) as receiver:
        # The shortest lease the timeout allows (timeout + 10 s): the killed worker's rows come back soon.
        config = base_config(
            tmp_path, workers=2, webhooks=[_subscription(receiver)], delivery={"lease_seconds": 13}, **store_config
        )
        proc, pids = start_workers(gateway_process, config)
        streams = await open_on_both(proc, pids, "keep")
        slow["delay"] = 2.0  # attempts in flight on both workers when one is killed
        runs = [f"late-{i}" for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda run: twilio_status_callback(proc, run, "ringing"), runs))
        await asyncio.sleep(0.5)
        victim = min(pids)
        survivor = (pids - {victim}).pop()
        os.kill(victim, signal.SIGKILL)
        slow["delay"] = 0.0

        # The survivor's calls keep flowing, and the killed worker's media died with it.
        from websockets.exceptions import ConnectionClosed

        for stream, owner in streams.values():
            if owner == survivor:
                await stream.echo()
            else:
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(stream.ws.recv(), 10)
        # The parent starts the killed worker again; then both serve.
        now = await asyncio.to_thread(
            wait_until, lambda: len(live_pids(proc) - pids) == 1 and live_pids(proc), 30, "the killed worker restarted"
        )
        assert survivor in now and victim not in now and len(now) == 2
        more = await open_on_both(proc, now, "again")
        assert {owner for _, owner in more.values()} == now
        await asyncio.to_thread(
            wait_until,
            lambda: (
                metric(proc, "gateway_media_sessions_active")
                == len(more) + sum(owner == survivor for _, owner in streams.values())
            ),
            15,
            "the dead worker's media sessions gone from /metrics",
        )
        # Every `ringing` is delivered: what the killed worker had leased is retaken when its lease ends.
        want = {(run, "call.ringing") for run in runs}
        await asyncio.to_thread(
            wait_until, lambda: want <= {(r, k) for r, k, _ in _delivered(receiver)}, 40, "all delivered"
        )
        for stream, _ in [*streams.values(), *more.values()]:
            await stream.ws.close()


async def test_sigterm_drains_every_worker_then_exits(gateway_process, tmp_path):
    config = base_config(tmp_path, workers=2, shutdown={"drain_seconds": 60})
    proc, pids = start_workers(gateway_process, config)
    streams = await open_on_both(proc, pids, "drain")
    proc.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(wait_until, lambda: httpx.get(proc.url + "/readyz").status_code == 503, 10, "not ready")
    for stream, _ in streams.values():  # live calls keep their media while the workers drain
        await stream.echo()
    assert proc.proc.poll() is None
    for run_id, (stream, _) in streams.items():  # the calls end: each worker stops when its calls have
        twilio_status_callback(proc, run_id, "completed", sid=stream.call_sid)
    assert await asyncio.to_thread(proc.proc.wait, 30) == 0
    lines = log_lines(proc)
    assert sum(line["message"].startswith("SIGTERM: draining") for line in lines) == 2
    assert {line["pid"] for line in lines if line["message"].startswith("SIGTERM: draining")} == pids
    assert any(line["message"] == "every worker has stopped" for line in lines)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()


def test_one_writer_process_is_shared_and_the_workers_reconnect_after_it_is_killed(gateway_process, tmp_path):
    with Receiver() as receiver:
        # A finish in flight when the writer dies is lost with it: its row comes back when its lease ends.
        config = base_config(tmp_path, workers=2, webhooks=[_subscription(receiver)], delivery={"lease_seconds": 13})
        proc, pids = start_workers(gateway_process, config)
        writers = [
            int(m[1])
            for line in log_lines(proc)
            if (m := re.match(r"store writer process started: pid (\d+)", line["message"]))
        ]
        assert len(writers) == 1  # the parent's; no worker starts one of its own
        spawned = {p for p in children(proc.proc.pid) if "spawn_main" in cmdline(p)}
        assert spawned == {writers[0], *pids}
        assert all(not children(pid) for pid in pids)
        runs = [f"run-{i}" for i in range(10)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda run: twilio_status_callback(proc, run, "initiated"), runs))
        os.kill(writers[0], signal.SIGKILL)
        lost = lambda: {
            l.get("pid") for l in log_lines(proc) if l["message"].startswith("store writer process connection lost")
        }
        wait_until(lambda: lost() == pids, 10, "both workers saw the writer go")
        with ThreadPoolExecutor(8) as pool:  # written by each worker itself meanwhile
            list(pool.map(lambda run: twilio_status_callback(proc, run, "ringing"), runs))
        wait_until(
            lambda: any(
                "store writer process (pid" in l["message"] and "starting it again" in l["message"]
                for l in log_lines(proc)
            ),
            10,
            "restart logged",
        )
        again = lambda: {
            (line.get("pid"), int(line["message"].rsplit("pid ", 1)[1].rstrip(")")))
            for line in log_lines(proc)
            if line["message"].startswith("connected to the store writer process again")
        }
        reconnected = wait_until(
            lambda: {pid for pid, _ in again()} == pids and again(), 30, "both workers reconnected"
        )
        new_writer = {p for p in children(proc.proc.pid) if "spawn_main" in cmdline(p)} - pids
        assert len(new_writer) == 1 and writers[0] not in new_writer
        assert {writer for _, writer in reconnected} == new_writer  # the hello came from the new writer
        with ThreadPoolExecutor(8) as pool:
            for status in ("in-progress", "completed"):
                list(pool.map(lambda run: twilio_status_callback(proc, run, status), runs))
        kinds = ["call.initiated", "call.ringing", "call.answered", "call.completed", "call.ended"]
        wanted = {(run, kind) for run in runs for kind in kinds}
        wait_until(lambda: {(r, k) for r, k, _ in _delivered(receiver)} >= wanted, 45, "every delivery")
        got = _delivered(receiver)
        assert {(r, k) for r, k, _ in got} == wanted
        # At least once: an attempt whose finish died with the writer is sent again, under the same
        # webhook-id (the receiver's deduplication key); each event has one id, in order per call.
        first = list(dict.fromkeys(got))
        assert len({wid for _, _, wid in first}) == len(first) == len(wanted)
        for run in runs:
            assert [kind for r, kind, _ in first if r == run] == kinds


def test_a_killed_parent_takes_its_workers_and_writer_with_it(gateway_process, tmp_path):
    proc, pids = start_workers(gateway_process, base_config(tmp_path, workers=2))
    spawned = {p for p in children(proc.proc.pid) if "spawn_main" in cmdline(p)}
    assert len(spawned) == 3 and pids < spawned  # two workers and the writer
    runtimes = glob.glob(os.path.join(tempfile.gettempdir(), "gateway-workers-*"))
    (runtime,) = [
        d for d in runtimes if any(f"_{min(pids)}.db" in name for name in os.listdir(os.path.join(d, "metrics")))
    ]
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait()

    def gone(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
        except OSError:
            return True

    wait_until(lambda: all(gone(pid) for pid in spawned), 15, "the workers and the writer exited")
    wait_until(lambda: not os.path.exists(runtime), 10, "the parent's runtime directory removed by a worker")
    with pytest.raises(httpx.HTTPError):
        httpx.get(proc.url + "/healthz", timeout=2)
