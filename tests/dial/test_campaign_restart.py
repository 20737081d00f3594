"""A campaign survives its gateway being killed mid-campaign: a real `gateway serve` process is
SIGKILLed with one call in progress and another still being placed, and a new process on the
same store finishes the campaign without calling anyone twice."""

from __future__ import annotations

import signal
import threading

from standardwebhooks import Webhook

from dial.campaign_support import Network, api, campaign, create, dial_config, phones, to_number, wait_status, wait_until
from dial.fakes import FakeTwilio
from support import GatewayProcess, Receiver, base_config, free_port


def calls_to(base: str, number: str) -> list[dict]:
    return [c for c in api(base, "GET", "/api/v1/calls?limit=500").json()["calls"] if c["to"] == number]


def test_killed_mid_campaign_resumes_from_the_store_and_calls_nobody_twice(tmp_path, store_config):
    placing = threading.Event()  # the second dial stays unanswered at the provider until set
    ended: set[str] = set()  # calls the network may end (the others stay up)
    free = threading.Event()  # from now on every call ends as soon as it is placed
    port = free_port()
    numbers = phones(5)
    with FakeTwilio(gate=lambda n, request: placing if n == 1 else None) as twilio, Receiver() as inline:
        config = base_config(tmp_path, public_url=f"http://127.0.0.1:{port}", **store_config,
                             **dial_config(twilio, orphan_seconds=1))
        first = GatewayProcess(tmp_path, config, port=port).start()
        second = None
        try:
            with Network(twilio, hold=lambda entry: not free.is_set() and entry["sid"] not in ended):
                made = create(first.url, numbers, concurrency=2, calls_per_second=100, webhooks={
                    "onCallComplete": inline.url + "/call", "onBatchComplete": inline.url + "/batch"})
                entries = twilio.wait_for("create", 2)
                answered = next(e for e in entries if e.get("sid"))
                ended.add(answered["sid"])  # the first call ends normally; its contact is done
                third = wait_until(lambda: len(twilio.of("create")) >= 3 and twilio.of("create")[2])
                # the third call is placed and its provider id stored; the second is still being placed
                wait_until(lambda: any(c["provider_call_id"] for c in calls_to(first.url, to_number(third))))
                assert not twilio.of("create")[1].get("sid")
                stuck = to_number(twilio.of("create")[1])
                assert [c["provider_call_id"] for c in calls_to(first.url, stuck)] == [None]
                assert first.stop(signal.SIGKILL) == -signal.SIGKILL

                second = GatewayProcess(tmp_path, config, port=port).start()
                assert campaign(second.url, made["id"])["status"] == "running"
                free.set()  # the call in progress ends now, with callbacks to the new process
                done = wait_status(second.url, made["id"], "completed", timeout=30)
            dialed = [to_number(e) for e in twilio.of("create")]
            assert sorted(dialed) == numbers, "someone was called twice, or not at all"
            assert done["statistics"] == {"total": 5, "processed": 5, "succeeded": 4, "failed": 1,
                                          "percentComplete": 100, "successRate": 80}
            contacts = api(second.url, "GET", f"/api/v1/campaigns/{made['id']}/contacts").json()["contacts"]
            interrupted = [c for c in contacts if c["outcome"] == "interrupted"]
            assert [c["phone"] for c in interrupted] == [stuck] and interrupted[0]["attempts"] == 1
            (record,) = calls_to(second.url, stuck)
            assert record["state"] == "failed" and record["annotations"]["dial_interrupted"] is True

            # the inline webhooks went out from both processes, signed, each call's record once
            # or more (at-least-once, same webhook-id), the batch's end once
            hook = Webhook(made["webhook_secret"])
            wait_until(lambda: len({r["headers"]["webhook-id"] for r in inline.requests}) >= 6, timeout=20)
            per_call = {r["headers"]["webhook-id"]: hook.verify(r["body"], r["headers"])
                        for r in inline.requests if r["path"] == "/call"}
            assert sorted(b["callData"]["phoneNumber"] for b in per_call.values()) == numbers
            batches = {r["headers"]["webhook-id"]: hook.verify(r["body"], r["headers"])
                       for r in inline.requests if r["path"] == "/batch"}
            assert [b["statistics"]["succeeded"] for b in batches.values()] == [4]
        finally:
            placing.set()
            for process in (first, second):
                if process is not None:
                    process.stop()
            if second is not None and second.proc.returncode not in (0, None):
                print(second.log())
