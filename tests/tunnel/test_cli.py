"""`gateway tunnel` (what `make tunnel` runs) and real `gateway serve` processes finding its tunnel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import httpx

from support import ROOT, TWILIO_SID, GatewayProcess, base_config, free_port, twilio_signature, wait_until

HOST = "quiet-river-stone-path.trycloudflare.com"


def gateway_cli(*args, path, env=None, **kw):
    environ = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    environ.update({"PATH": str(path), "PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "gateway.cli", "tunnel", *args], env=environ, capture_output=True,
                          text=True, timeout=30, cwd=kw.pop("cwd", None), **kw)


def test_without_cloudflared_it_says_how_to_install_it(tmp_path):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    result = gateway_cli(path=empty, cwd=tmp_path)
    assert result.returncode == 127
    assert "cloudflared is not installed" in result.stderr
    assert "brew install cloudflared" in result.stderr and "developers.cloudflare.com" in result.stderr
    assert "docker compose -f deploy/docker-compose.yml up" in result.stderr


def test_dry_run_prints_the_exact_command(tmp_path):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    result = gateway_cli("--dry-run", "--port", "9000", path=empty, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == "cloudflared tunnel --url http://localhost:9000 --metrics 127.0.0.1:20241"
    config = tmp_path / "gateway.yaml"
    config.write_text("listen: {port: 8123}\n")
    result = gateway_cli("--dry-run", "--config", str(config), path=empty, cwd=tmp_path)
    assert result.stdout.strip() == "cloudflared tunnel --url http://localhost:8123 --metrics 127.0.0.1:20241"


def test_make_tunnel_then_the_gateway_finds_it_by_itself(tmp_path, cloudflared_binary):
    """`gateway tunnel` runs cloudflared (a stand-in on PATH); a `gateway serve` process with
    `public_url: auto` finds the hostname through the metrics server, and through the log file."""
    metrics_port, gateway_port = free_port(), free_port()
    log_file = tmp_path / "logs" / "cloudflared.log"
    args_file = tmp_path / "cloudflared-args.json"
    environ = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    environ.update({"PATH": f"{cloudflared_binary}{os.pathsep}{environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
                    "FAKE_CLOUDFLARED_ARGS": str(args_file), "FAKE_TUNNEL_HOSTNAME": HOST})
    tunnel = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "tunnel", "--port", str(gateway_port), "--metrics",
         f"127.0.0.1:{metrics_port}", "--log-file", str(log_file)],
        env=environ, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gateways: list[GatewayProcess] = []
    try:
        wait_until(lambda: args_file.exists() and args_file.read_text(), timeout=15.0)
        assert json.loads(args_file.read_text()) == [
            "tunnel", "--url", f"http://localhost:{gateway_port}", "--metrics", f"127.0.0.1:{metrics_port}"]
        wait_until(lambda: log_file.exists() and HOST in log_file.read_text(), timeout=15.0)

        config = base_config(tmp_path, public_url="auto", tunnel={"metrics": [f"127.0.0.1:{metrics_port}"]})
        gateway = GatewayProcess(tmp_path, config, port=gateway_port).start()
        gateways.append(gateway)
        path = "/api/v1/telephony/webhook/wf-c/user-c/run-c"
        params = {"CallSid": "CA" + "6" * 32, "AccountSid": TWILIO_SID, "CallStatus": "ringing",
                  "From": "+15550100", "To": "+15550199", "Direction": "outbound-api"}
        answer = httpx.post(gateway.url + path, data=params, headers={
            "Host": HOST, "X-Twilio-Signature": twilio_signature(f"https://{HOST}{path}", params)}, timeout=10)
        assert answer.status_code == 200, answer.text
        stream = ET.fromstring(answer.text).find("./Connect/Stream")
        assert stream.get("url") == f"wss://{HOST}/api/v1/telephony/ws/wf-c/user-c/run-c"
        assert "tunnel found: https://" + HOST in gateway.log()
        assert f"Answer URL: https://{HOST}/api/v1/telephony/inbound/WORKFLOW/USER" in gateway.log()  # to paste

        # Only the log file to go by (no metrics server where this one looks).
        by_log = base_config(tmp_path / "second", public_url="auto",
                             tunnel={"metrics": [f"127.0.0.1:{free_port()}"], "log_file": str(log_file)})
        (tmp_path / "second").mkdir()
        second = GatewayProcess(tmp_path / "second", by_log).start()
        gateways.append(second)
        shown = httpx.get(second.url + "/api/v1/tunnel", headers={"Authorization": "Bearer test-admin-api-key"}).json()
        assert shown["mode"] == "tunnel" and shown["tunnel"]["source"] == "log" and shown["origin"] == f"https://{HOST}"
    finally:
        for gateway in gateways:
            gateway.stop()
        tunnel.send_signal(signal.SIGTERM)
        out, err = tunnel.communicate(timeout=20)
    assert tunnel.returncode == 0, err
    assert f"starting a cloudflared quick tunnel to http://localhost:{gateway_port}" in err.decode()
    assert "note: public_url is not set" in err.decode()  # this directory has no config: the hint says what to set
    assert "Initiating graceful shutdown" in log_file.read_text()


def test_make_tunnel_runs_gateway_tunnel():
    result = subprocess.run(["make", "--no-print-directory", "-n", "tunnel", "ARGS=--port 9000"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == ".venv/bin/gateway tunnel --port 9000"
