"""`delivery.processes`: real `gateway serve` processes whose webhook attempts are made in child
processes; and SQLite's writer process (`?writer=process`) under the same load."""

from __future__ import annotations

import json
import os
import re
import signal

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from postgres_support import STORE_BACKENDS, postgres_schema_url_sync
from support import API_KEY, TWILIO_SID, Receiver, base_config, twilio_signature, twilio_status_callback, wait_until

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STEPS = ("call.ringing", "call.completed", "call.ended")


def _config(tmp_path, receiver, processes, **overrides):
    hook = {"name": "crm", "events": ["call.*", "webhook.*"], "url": receiver.url + "/hooks/{{workflow_run_id}}",
            "signing": {"scheme": "standard", "secrets": [WHSEC]}, "allow_networks": ["127.0.0.0/8"], "timeout": 10,
            "retry": {"schedule": [0.2, 0.2, 0.2], "jitter": 0}}
    delivery = {"processes": processes, **overrides.pop("delivery", {})}
    return base_config(tmp_path, webhooks=[hook], delivery=delivery, **overrides)


def _child_pids(proc, count):
    """The delivery processes' pids, from their `ready` log lines."""
    found = wait_until(lambda: (pids := re.findall(r"delivery process \d+ ready \(pid (\d+)\)", proc.log())) and len(pids) >= count and pids,
                       timeout=30, what="delivery processes ready")
    return [int(pid) for pid in found]


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


def _received(receiver):
    return [(json.loads(r["body"])["workflow_run_id"], json.loads(r["body"])["type"], r["headers"]["webhook-id"]) for r in receiver.requests]


@pytest.fixture(params=STORE_BACKENDS)
def pipeline(request, tmp_path):
    """Config overrides naming the store: each backend, and SQLite with its writer process."""
    if request.param == "postgresql":
        with postgres_schema_url_sync() as url:
            yield {"store": url}
        return
    yield {"store": f"sqlite:///{tmp_path}/gateway.db" + ("?writer=process" if request.param == "sqlite-writer-process" else "")}


def test_two_delivery_processes_send_everything_signed_in_order(pipeline, gateway_process, tmp_path):
    """On either store (and SQLite's writer process): every event once, in order per call,
    signed; /metrics counts each delivery once (the gateway's worker counts the children's)."""
    verifier = Webhook(WHSEC)
    bad = []

    def verify(n, path):
        request = receiverbox[0].requests[n]
        try:
            verifier.verify(request["body"], request["headers"])
        except Exception as exc:  # noqa: BLE001 - recorded, asserted below
            bad.append(repr(exc))
            return 400, {}, b"{}", 0.0
        return 200, {}, b"{}", 0.0

    receiverbox = []
    with Receiver(verify) as receiver:
        receiverbox.append(receiver)
        proc = gateway_process(_config(tmp_path, receiver, 2, **pipeline))
        children = _child_pids(proc, 2)
        assert proc.proc.pid not in children and len(set(children)) == 2
        runs = [f"run-{i}" for i in range(10)]
        for status in ("ringing", "completed"):
            for run in runs:
                twilio_status_callback(proc, run, status)
        expected = {(run, kind) for run in runs for kind in STEPS}
        wait_until(lambda: {(r, k) for r, k, _ in _received(receiver)} >= expected, timeout=30, what="every event delivered")
        got = _received(receiver)
        assert bad == []
        assert len(got) == len(expected) and len({wid for _, _, wid in got}) == len(got)  # each once
        for run in runs:
            assert [k for r, k, _ in got if r == run] == list(STEPS)

        # /metrics counts what the children sent, once each.
        metrics = httpx.get(proc.url + "/metrics", timeout=10).text
        sent = re.search(r'^gateway_deliveries_total\{outcome="succeeded",subscription="crm"\} (\S+)$', metrics, re.M)
        assert sent and float(sent.group(1)) == len(expected), metrics[-2000:]
        assert "gateway_media_sessions_active" in metrics

        assert proc.stop() == 0
        assert all(_gone(pid) for pid in children)
        for index in (0, 1):
            assert f"delivery process {index} stopped" in proc.log()


def test_a_killed_delivery_process_is_started_again_and_nothing_is_lost(gateway_process, tmp_path):
    slow = {"delay": 3.0}
    with Receiver(lambda n, path: (200, {}, b"{}", slow["delay"])) as receiver:
        proc = gateway_process(_config(tmp_path, receiver, 1, delivery={"lease_seconds": 20}))
        (child,) = _child_pids(proc, 1)
        runs = [f"run-k{i}" for i in range(4)]
        for run in runs:
            twilio_status_callback(proc, run, "ringing")
        wait_until(lambda: receiver.requests, what="an attempt in flight")
        os.kill(child, signal.SIGKILL)
        slow["delay"] = 0.0
        wait_until(lambda: "starting it again" in proc.log(), what="the restart logged")
        (_, again) = _child_pids(proc, 2)
        assert again != child
        expected = {(run, "call.ringing") for run in runs}
        wait_until(lambda: {(r, k) for r, k, _ in _received(receiver)} >= expected, timeout=30, what="every event delivered")
        assert "exited with code -9" in proc.log()


def test_delivery_processes_end_with_a_killed_gateway(gateway_process, tmp_path):
    with Receiver() as receiver:
        proc = gateway_process(_config(tmp_path, receiver, 2))
        children = _child_pids(proc, 2)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        wait_until(lambda: all(_gone(pid) for pid in children), timeout=20, what="orphaned delivery processes to exit")


def test_enabling_a_subscription_reaches_the_delivery_processes(gateway_process, tmp_path):
    gone = {"on": True}
    with Receiver(lambda n, path: (410 if gone["on"] else 200, {}, b"{}", 0.0)) as receiver:
        proc = gateway_process(_config(tmp_path, receiver, 1))
        _child_pids(proc, 1)
        headers = {"Authorization": f"Bearer {API_KEY}"}

        def health():
            return httpx.get(proc.url + "/api/v1/subscriptions", headers=headers, timeout=10).json()["subscriptions"][0]["health"]

        twilio_status_callback(proc, "run-g", "ringing")
        wait_until(lambda: health()["disabled_at"], what="the 410 to disable the subscription")
        twilio_status_callback(proc, "run-g", "completed")
        pending = wait_until(lambda: {d["event_type"] for d in httpx.get(proc.url + "/api/v1/deliveries?status=pending", headers=headers,
                                                                         timeout=10).json()["deliveries"]} >= {"call.completed", "call.ended"},
                             what="the later events to wait")
        assert pending and len(receiver.requests) == 1  # nothing sent while disabled
        gone["on"] = False
        assert httpx.post(proc.url + "/api/v1/subscriptions/crm/enable", headers=headers, timeout=10).status_code == 200
        wait_until(lambda: {k for _, k, _ in _received(receiver)} >= {"call.completed", "call.ended", "webhook.endpoint_disabled"},
                   what="the waiting events to flow once enabled")


def _writer_pid(proc):
    found = wait_until(lambda: re.findall(r"store writer process started(?: again)?: pid (\d+)", proc.log()),
                       what="the writer process")
    return int(found[-1])


def test_a_killed_writer_process_loses_no_acknowledged_event(gateway_process, tmp_path):
    """kill -9 of the store's writer process under load: each callback is acknowledged or
    refused with 503 (not stored: the provider sends it again); every acknowledged one's event
    is delivered, and the gateway writes itself until the writer is back."""
    with Receiver() as receiver:
        proc = gateway_process(_config(tmp_path, receiver, 1, store=f"sqlite:///{tmp_path}/gateway.db?writer=process"))
        writer = _writer_pid(proc)
        acknowledged, refused = [], []
        with httpx.Client(timeout=10) as client:
            for n in range(300):
                if n == 100:
                    os.kill(writer, signal.SIGKILL)
                run = f"run-w{n}"
                url = f"{proc.url}/api/v1/telephony/status-callback/{run}"
                params = {"CallSid": f"CA{n:032d}", "AccountSid": TWILIO_SID, "CallStatus": "ringing"}
                status = client.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)}).status_code
                assert status in (204, 503), status
                (acknowledged if status == 204 else refused).append(run)
        assert len(acknowledged) >= 200
        wait_until(lambda: "store writer process started again" in proc.log(), timeout=30,
                   what="the writer process to be started again")
        delivered = wait_until(lambda: (got := {r for r, k, _ in _received(receiver) if k == "call.ringing"}) >= set(acknowledged) and got,
                               timeout=60, what="every acknowledged event delivered")
        assert set(acknowledged) <= delivered
        assert _gone(writer) and _writer_pid(proc) != writer
        assert proc.stop() == 0
