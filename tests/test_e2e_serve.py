"""End to end against real `gateway serve` processes on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import httpx

from support import API_KEY, TWILIO_SID, free_port, twilio_signature


def _post(proc, path, params):
    url = proc.url + path
    return httpx.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)}, timeout=10)


def _params(status, sid="CA" + "1" * 32, **extra):
    return {"CallSid": sid, "AccountSid": TWILIO_SID, "CallStatus": status, "From": "+15550001111", "To": "+15550002222",
            "Direction": "outbound-api", **extra}


def test_call_through_a_real_gateway_process_survives_kill_9(gateway_process, tmp_path):
    proc = gateway_process()
    answer = _post(proc, "/api/v1/telephony/webhook/wf/u/run-e2e", _params("in-progress"))
    assert answer.status_code == 200 and "<Stream" in answer.text
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda i: _post(proc, "/api/v1/telephony/status-callback/run-e2e",
                                              _params("in-progress" if i % 2 else "ringing")).status_code, range(100)))
    assert codes == [204] * 100
    assert _post(proc, "/api/v1/telephony/status-callback/run-e2e", _params("completed", CallDuration="9")).status_code == 204
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait()
    again = proc.start()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    call = httpx.get(again.url + "/api/v1/calls/run-e2e", headers=headers).json()
    assert call["state"] == "completed" and call["duration"] == 9
    assert len(call["timeline"]) == 102
    assert httpx.get(again.url + "/api/v1/calls/run-e2e").status_code == 401
    assert httpx.get(again.url + "/api/v1/calls/run-e2e", headers={"Authorization": "Bearer wrong"}).status_code == 401
    listing = httpx.get(again.url + "/api/v1/calls?state=completed", headers=headers).json()
    assert [c["workflow_run_id"] for c in listing["calls"]] == ["run-e2e"]
    assert httpx.get(again.url + "/api/v1/calls?state=sleeping", headers=headers).status_code == 400
    assert httpx.get(again.url + "/healthz").json() == {"status": "ok"}


def test_serve_with_no_config_at_all_uses_embedded_defaults(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("gateway did not start with no config")
        secrets = json.loads((tmp_path / "data" / "dev-secrets.json").read_text())
        assert (tmp_path / "data" / "gateway.db").exists()
        listing = httpx.get(f"http://127.0.0.1:{port}/api/v1/calls", headers={"Authorization": f"Bearer {secrets['api_key']}"})
        assert listing.status_code == 200 and listing.json()["calls"] == []
        # With no config file Twilio has development test credentials (tests/test_quickstart.py):
        # a request not signed with them is refused all the same.
        forged = httpx.post(f"http://127.0.0.1:{port}/api/v1/telephony/inbound/wf/u", data={"CallSid": "CA1"},
                            headers={"X-Twilio-Signature": "x"})
        assert forged.status_code == 403 and "signature does not match" in forged.json()["detail"]
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    assert "DEVELOPMENT SECRETS" in output
    assert secrets["api_key"] not in output


def test_bad_config_stops_startup_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("listen: {port: 8000, hots: x}\n")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "listen.hots: unknown key" in result.stderr
