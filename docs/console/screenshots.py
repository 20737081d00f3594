"""Regenerate docs/console/*.png: the operator console in the system's headless Chromium.

    .venv/bin/python docs/console/screenshots.py

Starts, on loopback only, a real `gateway serve` (recording on), a small voice agent that speaks
a transcript, two webhook receivers (one healthy, one failing), and a stand-in of Twilio's REST
API for campaigns; plays calls with `gateway simulate` and signed status callbacks; then signs in
to the console and photographs each page. Not run in CI (it takes a minute and only makes images).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from console.browser import button, chromium, sign_in, wait_for  # noqa: E402
from dial.campaign_support import Network, dial_config  # noqa: E402
from dial.fakes import FakeTwilio  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from support import API_KEY, GatewayProcess, Receiver, base_config, free_port, twilio_status_callback, wait_until  # noqa: E402

OUT = Path(__file__).resolve().parent
LINES = [("agent", "Hi, this is Ava from Acme Dental. How can I help you today?"),
         ("user", "I'd like to move my cleaning appointment to next week."),
         ("agent", "Sure. I have Tuesday at 10:30 or Thursday at 14:00. Which works better?"),
         ("user", "Tuesday at 10:30, please."),
         ("agent", "Done: Tuesday at 10:30. You'll get a text to confirm. Anything else?")]


def agent_server(port: int) -> threading.Thread:
    """A voice agent on the native protocol: speaks a transcript, echoes the caller's audio."""
    from websockets.asyncio.server import serve

    async def handle(socket):  # type: ignore[no-untyped-def]
        async for message in socket:
            if isinstance(message, bytes):
                await socket.send(message)
            elif json.loads(message).get("type") == "start":
                for role, text in LINES:
                    await socket.send(json.dumps({"type": "transcript", "role": role, "text": text, "final": True}))
                await socket.send(json.dumps({"type": "context", "data": {"appointment": "Tuesday 10:30", "intent": "reschedule"}}))

    async def main() -> None:
        async with serve(handle, "127.0.0.1", port):
            await asyncio.Future()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    return thread


def simulate(proc: GatewayProcess, **args: str) -> None:
    command = [sys.executable, "-m", "gateway.cli", "simulate", "--config", str(proc.config_path), "--url", proc.url,
               "--seconds", "2"]
    for name, value in args.items():
        command += [f"--{name}", value]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def shoot(driver, name: str, height: int | None = None) -> None:  # type: ignore[no-untyped-def]
    time.sleep(0.6)  # let the last poll paint
    driver.execute_script("window.scrollTo(0, 0)")
    full = height or min(2600, driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1440, max(900, full + 140))  # the window is taller than its viewport
    time.sleep(0.4)
    driver.save_screenshot(str(OUT / f"{name}.png"))
    driver.set_window_size(1440, 900)
    print("wrote", OUT / f"{name}.png")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="console-shots-"))
    agent_port = free_port()
    agent_server(agent_port)
    reply = json.dumps({"customer": {"id": "cus_8842", "tier": "gold"}, "ok": True}).encode()
    flaky = {"left": 1}

    def billing(n: int, path: str):  # type: ignore[no-untyped-def]
        if flaky["left"] > 0:
            flaky["left"] -= 1
            return 503, {}, b'{"error": "maintenance window"}', 0.0
        return 400, {}, b'{"error": "unknown account"}', 0.0

    def fate(entry, attempt):  # type: ignore[no-untyped-def]
        last = int(entry["body"]["To"][0][-2:])
        if last % 7 == 3:
            return [("ringing", {}), ("busy", {})]
        if last % 5 == 4:
            return [("ringing", {}), ("no-answer", {})]
        return Network.ANSWERED

    paused_numbers = [f"+1415555{i:04d}" for i in range(300, 340)]
    with Receiver(lambda n, path: (200, {}, reply, 0.0)) as crm, Receiver(billing) as bill, FakeTwilio() as twilio:
        network = Network(twilio, fate, hold=lambda entry: entry["body"]["To"][0] in paused_numbers).__enter__()
        webhooks = [
            {"name": "crm", "events": ["call.ended", "call.answered"], "url": crm.url + "/calls/{{workflow_run_id}}",
             "auth": {"type": "bearer_token", "token": "{{secret.CRM_TOKEN}}"},
             "signing": {"scheme": "standard", "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]},
             "payload_template": {"run": "{{workflow_run_id}}", "tenant": "{{initial_context.tenant | acme}}",
                                  "caller": "{{call.from}}", "seconds": "{{call.duration}}", "outcome": "{{event.type}}"},
             "response_mapping": {"customer_tier": "customer.tier"}, "allow_networks": ["127.0.0.0/8"], "timeout": 5},
            {"name": "billing", "events": ["call.ended"], "url": bill.url + "/usage", "allow_networks": ["127.0.0.0/8"],
             "retry": {"schedule": [1.0], "jitter": 0, "total_timeout": 60}, "timeout": 5},
        ]
        config = base_config(tmp, webhooks=webhooks, secrets={"CRM_TOKEN": "crm-token-not-shown"}, recording=True,
                             agent={"url": f"ws://127.0.0.1:{agent_port}", "audio": {"encoding": "pcm16", "sample_rate": 16000}},
                             delivery={"poll_seconds": 0.2}, **dial_config(twilio))
        proc = GatewayProcess(tmp, config).start()
        try:
            simulate(proc, **{"from": "+14155550123", "to": "+14155550188", "workflow": "dental-reception", "user": "acme"})
            for run, states, sender in (("run-7f3a", ["ringing", "busy"], "+442071838750"),
                                        ("run-91c2", ["ringing", "no-answer"], "+33142685300"),
                                        ("run-b4d0", ["ringing", "in-progress", "completed"], "+4930901820"),
                                        ("run-e1aa", ["ringing", "in-progress"], "+14155550142")):
                for state in states:
                    extra = {"CallDuration": "48"} if state == "completed" else {}
                    twilio_status_callback(proc, run, state, From=sender, To="+14155550100", **extra)
            simulate(proc, **{"from": "+14155550177", "to": "+14155550100", "workflow": "dental-reception", "user": "acme"})
            headers = {"Authorization": f"Bearer {API_KEY}"}
            failed = wait_until(lambda: [d for d in httpx.get(proc.url + "/api/v1/deliveries?subscription=billing&status=failed",
                                                              headers=headers).json()["deliveries"] if d["attempts"] >= 2],
                                30, "a billing delivery that failed after a retry")[0]
            calls = httpx.get(proc.url + "/api/v1/calls?limit=500", headers=headers).json()["calls"]
            simulated = next(c for c in calls if c["workflow_run_id"].startswith("sim-") and c["state"] == "completed")

            driver = chromium(1440, 900)
            try:
                sign_in(driver, proc.url, API_KEY)
                wait_for(driver, lambda d: "run-7f3a" in d.find_element(By.ID, "view").text, what="calls")
                shoot(driver, "calls", 900)
                for route, text, name, height in ((f"calls/{simulated['workflow_run_id']}", "Tuesday at 10:30", "call", None),
                                                  ("deliveries", "billing", "deliveries", 1100),
                                                  (f"deliveries/{failed['id']}", "Attempt 2", "delivery", None)):
                    driver.get(f"{proc.url}/console/#/{route}")
                    wait_for(driver, lambda d: text in d.find_element(By.ID, "view").text, what=name)
                    shoot(driver, name, height)
                driver.get(f"{proc.url}/console/#/webhooks/crm")
                wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "input[data-path='initial_context.tenant']"), what="the test panel")
                for path, value in (("initial_context.tenant", "acme-east"), ("call.from", "+14155550123"), ("call.duration", "95")):
                    driver.find_element(By.CSS_SELECTOR, f"input[data-path='{path}']").send_keys(value)
                button(driver, "Send test").click()
                wait_for(driver, lambda d: d.find_elements(By.ID, "test-result"), what="the test result")
                shoot(driver, "webhooks")
                for name, numbers, options in (("Spring recall", [f"+1415555{i:04d}" for i in range(200, 320)], {"concurrency": 2, "calls_per_second": 3}),
                                               ("Overdue reminders", paused_numbers, {"concurrency": 2, "calls_per_second": 20})):
                    made = httpx.post(proc.url + "/api/v1/campaigns", headers=headers, json={
                        "name": name, "workflow_id": "dental-reception", "user_id": "acme",
                        "contacts": [{"phone": p} for p in numbers], "options": {**options, "retry": {"on": ["busy"], "max": 1, "delay": 600}}})
                    made.raise_for_status()
                httpx.post(proc.url + f"/api/v1/campaigns/{made.json()['id']}/pause", headers=headers)
                wait_until(lambda: any(c["statistics"]["processed"] >= 20 for c in
                                       httpx.get(proc.url + "/api/v1/campaigns", headers=headers).json()["campaigns"]), 60, "campaign progress")
                driver.get(f"{proc.url}/console/#/campaigns")
                wait_for(driver, lambda d: "paused" in d.find_element(By.ID, "view").text, what="campaigns")
                shoot(driver, "campaigns")
            finally:
                driver.quit()
        finally:
            network.__exit__(None, None, None)  # the calls it ends stop before the gateway does
            proc.stop()


if __name__ == "__main__":
    main()
