"""`gateway webhooks test` and `gateway deliveries ...` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from support import Receiver, base_config

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def run_cli(*args, config):
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def write_config(tmp_path, receiver, **sub):
    subscription = {"name": "crm", "events": ["call.ended"], "url": receiver.url + "/calls/{{workflow_run_id}}",
                    "auth": {"type": "bearer_token", "token": "{{secret.CRM_TOKEN}}"},
                    "signing": {"scheme": "standard", "secrets": [WHSEC]}, "allow_networks": ["127.0.0.0/8"],
                    "response_mapping": {"tier": "tier"}, **sub}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, webhooks=[subscription], secrets={"CRM_TOKEN": "tok-secret-123"})))
    return path


def test_webhooks_test_prints_request_answer_verdict_and_mapping(tmp_path):
    with Receiver(lambda n, path: (200, {}, b'{"tier": "gold"}', 0.0)) as receiver:
        config = write_config(tmp_path, receiver)
        result = run_cli("webhooks", "test", "crm", config=config)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert f"> POST {receiver.url}/calls/sample-run" in out
        assert "authorization: [redacted]" in out.lower() and "tok-secret-123" not in out
        assert "webhook-signature: [redacted]" in out.lower() or "webhook-signature" in out.lower()
        assert "< 200" in out and "verdict: success" in out
        assert '"tier": "gold"' in out and '"crm_action_success": true' in out
        assert "crm_status_code and crm_action_success are always added" in out  # the keys explain themselves
        request = receiver.requests[0]
        assert request["headers"]["authorization"] == "Bearer tok-secret-123"
        assert json.loads(request["body"])["type"] == "call.ended"
        as_json = run_cli("webhooks", "test", "crm", "--json", config=config)
        report = json.loads(as_json.stdout)
        assert as_json.returncode == 0 and report["status"] == 200 and report["success"] is True
        assert report["gathered_context"] == {"tier": "gold", "crm_status_code": 200, "crm_action_success": True}
        assert "tok-secret-123" not in as_json.stdout


def test_webhooks_test_reports_failure_and_unknown_names(tmp_path):
    with Receiver(lambda n, path: (500, {}, b"oops", 0.0)) as receiver:
        config = write_config(tmp_path, receiver)
        failed = run_cli("webhooks", "test", "crm", "--event", "call.busy", config=config)
        assert failed.returncode == 1 and "< 500" in failed.stdout and "verdict: retry" in failed.stdout
        unknown = run_cli("webhooks", "test", "nope", config=config)
        assert unknown.returncode == 2 and "no webhook named 'nope'" in unknown.stderr


def test_deliveries_list_retry_replay(tmp_path, gateway_server):
    import httpx

    from support import TWILIO_SID, twilio_signature

    with Receiver(lambda n, path: (400, {}, b"{}", 0.0)) as receiver:
        config = write_config(tmp_path, receiver, events=["call.ringing"])
        server = gateway_server(**yaml.safe_load(config.read_text()))
        params = {"CallSid": "CA" + "5" * 32, "AccountSid": TWILIO_SID, "CallStatus": "ringing"}
        url = server.url + "/api/v1/telephony/status-callback/run-cli"
        httpx.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
        receiver.wait_for(1)
        import time

        time.sleep(0.3)
        listing = run_cli("deliveries", "list", "--status", "failed", config=config)
        assert listing.returncode == 0 and "failed" in listing.stdout and "call.ringing" in listing.stdout
        delivery_id = listing.stdout.split()[0]
        retried = run_cli("deliveries", "retry", delivery_id, config=config)
        assert retried.returncode == 0 and "pending again" in retried.stdout
        receiver.wait_for(2)
        replayed = run_cli("deliveries", "replay", "--subscription", "crm", "--since", "2000-01-01T00:00:00Z", config=config)
        assert replayed.returncode == 0 and replayed.stdout.startswith("queued 1 delivery to crm:")  # text, as its siblings
        as_json = run_cli("deliveries", "replay", "--subscription", "crm", "--since", "2000-01-01T00:00:00Z", "--json", config=config)
        assert as_json.returncode == 0 and json.loads(as_json.stdout) == {"subscription": "crm", "queued": 1}
        assert run_cli("deliveries", "retry", "msg_nope", config=config).returncode == 2


def test_a_line_break_in_call_data_put_in_a_header_fails_the_delivery_visibly(tmp_path, gateway_server):
    """A header rendered from call data with a line break (or any control character but HTAB)
    is never sent: that delivery fails at once with a reason naming the header, shown by
    `gateway deliveries list` and counted; subscriptions without the header still get the call."""
    import httpx

    from support import twilio_status_callback, wait_until

    with Receiver() as receiver:
        hooks = [{"name": "crm", "events": ["call.*"], "url": receiver.url + "/crm", "allow_networks": ["127.0.0.0/8"],
                  "headers": {"X-Caller": "{{call.from}}"}},
                 {"name": "plain", "events": ["call.*"], "url": receiver.url + "/plain", "allow_networks": ["127.0.0.0/8"]}]
        config = base_config(tmp_path, webhooks=hooks)
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        server = gateway_server(webhooks=hooks)
        twilio_status_callback(server, "run-crlf", "ringing", From="+15551234\r\nX-Smuggled: yes")
        twilio_status_callback(server, "run-vt", "ringing", From="+15551234\x0bX-Smuggled: yes")
        wait_until(lambda: len(receiver.requests) >= 2)
        admin = {"Authorization": "Bearer test-admin-api-key"}
        failed = wait_until(lambda: (d := httpx.get(server.url + "/api/v1/deliveries?subscription=crm&status=failed",
                                                     headers=admin).json()["deliveries"]) and len(d) == 2 and d)
        metrics = httpx.get(server.url + "/metrics").text
    assert [r["path"] for r in receiver.requests] == ["/plain", "/plain"]
    assert not any("x-smuggled" in r["headers"] or "x-caller" in r["headers"] for r in receiver.requests)
    for delivery in failed:
        assert delivery["attempts"] == 1 and delivery["last_error"].startswith("request could not be built: header X-Caller:")
        assert "control character" in delivery["last_error"]
    assert {"U+000D at 9" in d["last_error"] or "U+000B at 9" in d["last_error"] for d in failed} == {True}
    assert 'gateway_deliveries_unbuildable_total{subscription="crm"} 2.0' in metrics
    listing = run_cli("deliveries", "list", "--subscription", "crm", config=path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.strip().splitlines()
    assert len(lines) == 2 and all("failed" in line and "header X-Caller: the value has a control character" in line
                                   for line in lines)
