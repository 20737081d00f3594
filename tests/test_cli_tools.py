"""The operator's command line against real processes: `webhooks listen` (checked with the
standardwebhooks package), `events tail` following a real `gateway serve`, `calls`, `--json`,
a closed pipe, and the noise that used to come with them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from support import API_KEY, ROOT, Receiver, base_config, free_port, wait_until

WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()


def cli(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd, **kw)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", "-m", "gateway.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def read_lines(proc: subprocess.Popen, predicate, timeout: float = 30) -> list[str]:
    """Lines of `proc`'s stdout until `predicate(lines)` holds (a reader thread keeps it from blocking)."""
    import threading

    lines: list[str] = []
    thread = threading.Thread(target=lambda: [lines.append(line) for line in proc.stdout], daemon=True)
    thread.start()
    wait_until(lambda: predicate(lines), timeout=timeout, what="expected output")
    return lines


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(2)  # Ctrl-C
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_webhooks_listen_verifies_standard_webhooks_signatures():
    port = free_port()
    proc = start("webhooks", "listen", "--port", str(port), "--secret", WHSEC, "--json")
    try:
        url = f"http://127.0.0.1:{port}/hooks"
        body = json.dumps({"type": "call.ended", "workflow_run_id": "run-1", "data": {}})
        signer = Webhook(WHSEC)  # the independent oracle signs
        now = datetime.now(timezone.utc)
        headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signer.sign("msg_1", now, body), "content-type": "application/json"}
        wait_until(lambda: _answers(url.replace("/hooks", "/probe")), timeout=20, what="the listener")
        good = httpx.post(url, content=body, headers=headers)
        forged = httpx.post(url, content=body.replace("run-1", "run-2"), headers=headers)
        unsigned = httpx.post(url, content=body)
        assert (good.status_code, forged.status_code, unsigned.status_code) == (204, 401, 401)
        assert "no signature matches" in forged.text and "missing webhook-id" in unsigned.text
        lines = read_lines(proc, lambda got: sum('"/hooks"' in line for line in got) >= 3)
        seen = [json.loads(line) for line in lines if '"/hooks"' in line]
        assert [s["signature"] for s in seen] == ["ok", "invalid", "invalid"]
        assert seen[0]["body"]["workflow_run_id"] == "run-1" and seen[0]["headers"]["webhook-id"] == "msg_1"
    finally:
        stop(proc)
    assert "Traceback" not in proc.stderr.read()


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


def test_webhooks_listen_refuses_a_malformed_secret():
    result = cli("webhooks", "listen", "--secret", "not-a-secret")
    assert result.returncode == 2 and "--secret: a signing secret starts with 'whsec_'" in result.stderr


def test_events_tail_follows_a_real_gateway(gateway_process, tmp_path):
    with Receiver() as receiver:
        config = base_config(tmp_path, webhooks=[{"name": "crm", "events": ["call.*"], "url": receiver.url + "/x",
                                                  "allow_networks": ["127.0.0.0/8"]}])
        proc = gateway_process(config)
        tail = start("events", "tail", "--json", "--config", str(proc.config_path))
        text = start("events", "tail", "--config", str(proc.config_path))
        try:
            time.sleep(1.5)  # both have looked once: only what happens from now on is new
            sim = cli("simulate", "--seconds", "0.3", "--json", "--config", str(proc.config_path), "--url", proc.url)
            assert sim.returncode == 0, sim.stderr
            run = json.loads(sim.stdout)["workflow_run_id"]
            lines = read_lines(tail, lambda got: any('"call.ended"' in line for line in got)
                               and any('"delivery"' in line and '"succeeded"' in line for line in got))
            items = [json.loads(line) for line in lines]
            events = [i["type"] for i in items if i["kind"] == "event"]
            assert events[0] == "call.initiated" and events[-1] == "call.ended" and all(i["workflow_run_id"] == run for i in items)
            assert any(i["kind"] == "delivery" and i["status"] == "succeeded" for i in items)
            human = read_lines(text, lambda got: any("call.ended" in line and "event" in line for line in got))
            assert human[0].startswith("following events and deliveries")
        finally:
            stop(tail)
            stop(text)
        assert "Traceback" not in tail.stderr.read() and tail.returncode in (0, 130)


def test_a_closed_pipe_ends_quietly(tmp_path):
    (tmp_path / "g.yaml").write_text(f"store: sqlite:///{tmp_path}/g.db\n")
    for args in (["deliveries", "list"], ["calls", "list"]):
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", *args, "--config", str(tmp_path / "g.yaml")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # the reader (`| head`) is gone before the first line is written
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0
        assert "BrokenPipeError" not in stderr and "Traceback" not in stderr, stderr


def test_no_development_secrets_warning_from_tools(tmp_path):
    """The warning belongs to `gateway serve`; a tool reading the secrets says nothing about them."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dev-secrets.json").write_text(json.dumps({"api_key": "k" * 43, "secret_key": "s" * 43,
                                                       "twilio_auth_token": "t" * 43, "vonage_signature_secret": "v" * 43}))
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    for args in (["admin-key"], ["calls", "list"], ["deliveries", "list"], ["check-config"],
                 ["simulate", "--url", f"http://127.0.0.1:{free_port()}", "--wait", "0"]):
        result = cli(*args, cwd=tmp_path, env=env)
        assert "DEVELOPMENT" not in result.stderr + result.stdout, (args, result.stderr)
    assert cli("admin-key", cwd=tmp_path, env=env).stdout.strip() == "k" * 43


def test_admin_key_prefers_the_configured_key(tmp_path):
    (tmp_path / "g.yaml").write_text(f"api_key: {API_KEY}\n")
    result = cli("admin-key", "--json", "--config", str(tmp_path / "g.yaml"))
    assert json.loads(result.stdout) == {"api_key": API_KEY, "source": "the configuration"}


def test_a_short_vonage_secret_draws_no_pyjwt_warning():
    """Vonage chooses the secret; pyjwt's advice about its length is noise on every request."""
    code = ("import time, warnings, jwt\n"
            "warnings.simplefilter('default')\n"
            "from gateway.providers.vonage import ReplayGuard, verify_vonage_jwt\n"
            "token = jwt.encode({'iat': int(time.time()), 'jti': 'j1'}, 'short-secret', algorithm='HS256')\n"
            "print(verify_vonage_jwt('Bearer ' + token, 'short-secret', b'', now=time.time(), replay=ReplayGuard()).ok)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.stdout.strip() == "True", result.stderr
    assert "InsecureKeyLengthWarning" not in result.stderr


def test_check_config_json(tmp_path):
    (tmp_path / "g.yaml").write_text("listen: {port: 9123}\n")
    result = cli("check-config", "--json", "--config", str(tmp_path / "g.yaml"))
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["listen"]["port"] == 9123


@pytest.mark.parametrize("command", [["deliveries", "list"], ["calls", "list"]])
def test_json_output_of_listings(tmp_path, command):
    (tmp_path / "g.yaml").write_text(f"store: sqlite:///{tmp_path}/g.db\n")
    result = cli(*command, "--json", "--config", str(tmp_path / "g.yaml"))
    assert result.returncode == 0 and json.loads(result.stdout)[command[0]] == []


def test_start_up_prints_the_urls_for_the_provider_consoles(gateway_process, tmp_path):
    proc = gateway_process(base_config(tmp_path, public_url="https://gw.example.com"))
    log = wait_until(lambda: "Event URL" in proc.log() and proc.log(), timeout=20, what="the console URLs")
    assert "'A call comes in' (Webhook, HTTP POST): https://gw.example.com/api/v1/telephony/inbound/WORKFLOW/USER" in log
    assert "'Call status changes': https://gw.example.com/api/v1/telephony/status-callback/twilio" in log
    assert "Answer URL: https://gw.example.com/api/v1/telephony/inbound/WORKFLOW/USER" in log
    assert "Event URL (HTTP POST): https://gw.example.com/api/v1/telephony/status-callback/vonage" in log
