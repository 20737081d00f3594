"""Two real `gateway serve` processes on one PostgreSQL, as a deployment behind a load balancer."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from media_control_support import assert_clear_reaches_media_owner
from postgres_support import postgres_schema_url
from support import Receiver, base_config, twilio_status_callback

pytestmark = pytest.mark.postgresql
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _callback(proc, run_id, status):
    return twilio_status_callback(proc, run_id, status).status_code


@pytest.fixture
def pg_url():
    async def enter():
        context = postgres_schema_url()
        return context, await context.__aenter__()

    context, url = asyncio.run(enter())
    yield url
    asyncio.run(context.__aexit__(None, None, None))


def test_two_instances_share_calls_and_deliveries(gateway_process, tmp_path, pg_url):
    slow = {"delay": 0.0}
    with Receiver(lambda n, path: (200, {}, b"{}", slow["delay"])) as receiver:
        def config(name):
            # The shortest lease the timeout allows (timeout + 10 s): the killed instance's rows come back soon.
            return base_config(tmp_path / name, store=pg_url, delivery={"lease_seconds": 13},
                               webhooks=[{"name": "crm", "events": ["call.*"], "url": receiver.url + "/hooks/{{workflow_run_id}}",
                                          "signing": {"scheme": "standard", "secrets": [WHSEC]},
                                          "allow_networks": ["127.0.0.0/8"], "timeout": 3}])
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a, b = gateway_process(config("a")), gateway_process(config("b"))
        runs = [f"run-{i}" for i in range(12)]
        statuses = ["initiated", "ringing", "in-progress", "completed"]
        with ThreadPoolExecutor(8) as pool:
            for status in statuses:  # each step of every call lands on either instance
                codes = list(pool.map(lambda ir: _callback((a, b)[ir[0] % 2], ir[1], status), enumerate(runs)))
                assert codes == [204] * len(runs)
        expected = {(run, kind) for run in runs for kind in ("call.initiated", "call.ringing", "call.answered", "call.completed", "call.ended")}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(receiver.requests) < len(expected):
            time.sleep(0.1)
        got = [(json.loads(r["body"])["workflow_run_id"], json.loads(r["body"])["type"], r["headers"]["webhook-id"]) for r in receiver.requests]
        assert {(run, kind) for run, kind, _ in got} == expected
        assert len({wid for _, _, wid in got}) == len(got)  # none delivered twice
        for run in runs:
            assert [k for r, k, _ in got if r == run] == ["call.initiated", "call.ringing", "call.answered", "call.completed", "call.ended"]

        # Kill -9 one instance while its attempts are in flight; the other finishes the work.
        slow["delay"] = 2.0
        before = len(receiver.requests)
        more = [f"late-{i}" for i in range(6)]
        for i, run in enumerate(more):
            assert _callback(a if i % 2 else b, run, "ringing") == 204
        time.sleep(0.5)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        slow["delay"] = 0.0
        deadline = time.monotonic() + 30
        want = {(run, "call.ringing") for run in more}
        while time.monotonic() < deadline:
            seen = {(json.loads(r["body"])["workflow_run_id"], json.loads(r["body"])["type"]) for r in receiver.requests[before:]}
            if seen >= want:
                break
            time.sleep(0.1)
        assert seen >= want


async def test_clear_asked_of_one_instance_reaches_the_media_owner(gateway_process, tmp_path, pg_url):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = gateway_process(base_config(tmp_path / "a", store=pg_url))
    b = gateway_process(base_config(tmp_path / "b", store=pg_url))
    await assert_clear_reaches_media_owner(a, b, "run-ctl", "CA" + "8" * 32)
