"""Two real `gateway serve` processes on one PostgreSQL run campaigns: the leader's session is
terminated mid-campaign (as a failover, a network blip or an idle timeout does), and still
nobody is called twice, exactly one instance leads afterwards, and the old leader listens
again; a campaign made on one instance has its inline webhooks delivered by the other once
the first is gone."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest

from dial.campaign_support import Network, create, dial_config, phones, to_number, wait_status
from dial.fakes import FakeTwilio
from media_control_support import assert_clear_reaches_media_owner
from postgres_support import leader_pids, postgres_schema_url_sync, terminate_backend
from standardwebhooks import Webhook

from support import GatewayProcess, Receiver, base_config, free_port, wait_until

pytestmark = pytest.mark.postgresql
LEADS, STANDS_BY = "this instance runs the campaigns", "another gateway instance runs the campaigns"


def leadership(process: GatewayProcess) -> str | None:
    """What the process last said about leading the campaigns."""
    said = re.findall(f"({LEADS}|{STANDS_BY})", process.log())
    return said[-1] if said else None


def start_two(tmp_path, url: str, twilio: FakeTwilio, *, public_b: bool = False, **dial) -> list[GatewayProcess]:
    """Two `gateway serve` processes on the store `url`, each with its own public URL (or with
    `public_b`, both behind b's, as if a load balancer sent every callback to b)."""
    processes: list[GatewayProcess] = []
    ports = {"a": free_port(), "b": free_port()}
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            port = ports[name]
            public = ports["b"] if public_b else port
            config = base_config(tmp_path / name, store=url, public_url=f"http://127.0.0.1:{public}",
                                 **dial_config(twilio, **dial))
            processes.append(GatewayProcess(tmp_path / name, config, port=port).start())
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return processes


def test_leader_session_terminated_mid_campaign_dials_each_contact_once(tmp_path):
    numbers = phones(10)
    with postgres_schema_url_sync() as url, FakeTwilio() as twilio, Network(twilio):
        processes = start_two(tmp_path, url, twilio, poll_seconds=0.5)
        try:
            a, b = processes
            made = create(a.url, numbers, concurrency=2, calls_per_second=1)
            twilio.wait_for("create", 2)
            leader = wait_until(lambda: next((p for p in processes if leadership(p) == LEADS), None), what="a leader")
            other = b if leader is a else a
            (pid,) = asyncio.run(leader_pids(url, "campaign-runner"))
            asyncio.run(terminate_backend(pid))

            wait_status(other.url, made["id"], "completed", timeout=90)
            dialed = sorted(to_number(entry) for entry in twilio.of("create"))
            assert dialed == numbers, "someone was called twice, or not at all"

            # exactly one instance leads (each says what it believes), on a live session
            wait_until(lambda: sorted(map(leadership, processes)) == sorted([LEADS, STANDS_BY]), timeout=15,
                       what="one leader and one standing by")
            (holder,) = asyncio.run(leader_pids(url, "campaign-runner"))
            assert holder != pid
            assert "lost leadership of campaign-runner" in leader.log()
            # the old leader's LISTEN works again: a control request NOTIFYed by the other reaches it
            asyncio.run(assert_clear_reaches_media_owner(leader, other, "run-ctl", "CA" + "7" * 32))
        finally:
            for process in processes:
                process.stop()


def test_a_campaign_made_on_a_stopped_instance_has_its_webhooks_delivered_by_another(tmp_path):
    numbers = phones(3)
    free = threading.Event()  # calls stay up until the instance that made the campaign is gone
    with postgres_schema_url_sync() as url, FakeTwilio() as twilio, Receiver() as inline, \
            Network(twilio, hold=lambda entry: not free.is_set()):
        a, b = processes = start_two(tmp_path, url, twilio, public_b=True)
        try:
            made = create(a.url, numbers, concurrency=3, calls_per_second=100, webhooks={
                "onCallComplete": inline.url + "/call", "onBatchComplete": inline.url + "/batch"})
            twilio.wait_for("create", 3)
            a.stop()
            free.set()
            wait_status(b.url, made["id"], "completed", timeout=60)
            hook = Webhook(made["webhook_secret"])
            wait_until(lambda: {r["path"] for r in inline.requests} == {"/call", "/batch"}
                       and len({r["headers"]["webhook-id"] for r in inline.requests}) == 4, timeout=30,
                       what="the campaign's webhooks")
            calls = {r["headers"]["webhook-id"]: hook.verify(r["body"], r["headers"]) for r in inline.requests if r["path"] == "/call"}
            assert sorted(body["callData"]["phoneNumber"] for body in calls.values()) == numbers
        finally:
            for process in processes:
                process.stop()
