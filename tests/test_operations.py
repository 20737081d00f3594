"""Running it like production: metrics, structured logs, graceful shutdown, protective limits."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import time
import xml.etree.ElementTree as ET

import httpx
from websockets.asyncio.client import connect

from gateway.logs import JsonFormatter, RedactSecrets, RunIdFilter, RUN_ID
from support import API_KEY, TWILIO_SID, TWILIO_TOKEN, base_config, twilio_signature


def _signed_post(url, params):
    return httpx.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)}, timeout=10)


def _params(status="ringing", sid="CA" + "3" * 32):
    return {"CallSid": sid, "AccountSid": TWILIO_SID, "CallStatus": status, "From": "+1555", "To": "+1666"}


def test_metrics_count_transitions_and_signature_failures(gateway_server):
    server = gateway_server()
    assert _signed_post(server.url + "/api/v1/telephony/status-callback/run-m1", _params("ringing")).status_code == 204
    bad = httpx.post(server.url + "/api/v1/telephony/status-callback/run-m1", data=_params(), headers={"X-Twilio-Signature": "nope"})
    assert bad.status_code == 403
    text = httpx.get(server.url + "/metrics").text
    assert 'gateway_call_transitions_total{state="ringing"}' in text
    assert 'gateway_signature_failures_total{provider="twilio"}' in text
    assert "gateway_media_sessions_active" in text and "gateway_outbox_pending" in text
    assert 'gateway_media_frames_total{kind="frames_in"}' in text


def test_json_log_lines_carry_run_id_and_never_secrets():
    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "token is %s and more", ("sup3r-secret-value",), None)
    token = RUN_ID.set("run-42")
    try:
        RunIdFilter().filter(record)
    finally:
        RUN_ID.reset(token)
    RedactSecrets(["sup3r-secret-value"]).filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["run_id"] == "run-42" and line["message"] == "token is [redacted] and more"
    assert line["level"] == "info" and line["logger"] == "gateway.x" and line["ts"].endswith("Z")


def test_a_message_is_formatted_once_between_the_redaction_and_the_line():
    class Counted:
        calls = 0

        def __str__(self) -> str:
            Counted.calls += 1
            return "value"

    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "it is %s", (Counted(),), None)
    RunIdFilter().filter(record)
    RedactSecrets(["sup3r-secret-value"]).filter(record)
    assert json.loads(JsonFormatter().format(record))["message"] == "it is value"
    assert Counted.calls == 1


def test_process_logs_are_json_one_line_per_request_without_secrets(gateway_process, tmp_path):
    proc = gateway_process(base_config(tmp_path, log={"format": "json"}))
    assert _signed_post(proc.url + "/api/v1/telephony/status-callback/run-log", _params()).status_code == 204
    httpx.get(proc.url + "/api/v1/calls", headers={"Authorization": "Bearer wrong"})
    time.sleep(0.3)
    lines = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    request_lines = [l for l in lines if l["logger"] == "gateway.http"]
    callback_lines = [l for l in lines if "status-callback/run-log" in l["message"] or "callback run=run-log" in l["message"]]
    assert len(callback_lines) == 1  # one line per callback: the request and what it did
    (callback_line,) = callback_lines
    assert callback_line["logger"] == "gateway.http" and callback_line["run_id"] == "run-log"
    assert callback_line["message"].startswith("POST /api/v1/telephony/status-callback/run-log 204 ")
    assert "twilio callback run=run-log status=ringing outcome=" in callback_line["message"]
    assert any("GET /api/v1/calls 401" in l["message"] for l in request_lines)
    assert any(l.get("run_id") == "run-log" for l in lines)
    text = proc.log()
    assert TWILIO_TOKEN not in text and API_KEY not in text


def test_rate_limit_per_ip_on_provider_routes(gateway_server):
    server = gateway_server(limits={"provider_requests_per_second": 1, "provider_burst": 3})
    codes = [httpx.post(server.url + "/api/v1/telephony/status-callback/r", data={}).status_code for _ in range(6)]
    assert codes[:3] == [403, 403, 403] and codes[3:] == [429, 429, 429]
    assert httpx.get(server.url + "/healthz").status_code == 200  # other routes are not limited
    assert 'gateway_refusals_total{limit="provider_rate_per_ip"}' in httpx.get(server.url + "/metrics").text


async def _open_stream(proc):
    params = {**_params("in-progress"), "Direction": "inbound"}
    url = proc.url + "/api/v1/telephony/webhook/wf/u/run-drain"
    async with httpx.AsyncClient() as client:
        answer = await client.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
    stream = ET.fromstring(answer.text).find("./Connect/Stream")
    ws_url = stream.get("url")
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    ws = await connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(ws_url, {})}, proxy=None)
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(json.dumps({"event": "start", "streamSid": "MZ" + "9" * 32, "start": {
        "streamSid": "MZ" + "9" * 32, "callSid": params["CallSid"], "customParameters": parameters,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
    return ws


async def _echo_once(ws):
    await ws.send(json.dumps({"event": "media", "streamSid": "MZ" + "9" * 32,
                              "media": {"payload": base64.b64encode(b"\x7f" * 160).decode()}}))
    message = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert message["event"] == "media"


async def test_sigterm_keeps_a_live_calls_ending_then_exits_zero(gateway_process, tmp_path):
    from support import Receiver

    with Receiver() as receiver:
        proc = gateway_process(base_config(tmp_path, shutdown={"drain_seconds": 60}, webhooks=[
            {"name": "crm", "events": ["call.completed", "call.ended"], "url": receiver.url + "/hook",
             "allow_networks": ["127.0.0.0/8"]}]))
        ws = await _open_stream(proc)
        await _echo_once(ws)
        ringing = _params("ringing", sid="CA" + "6" * 32)  # an outbound call ringing when the drain begins
        out_status = proc.url + "/api/v1/telephony/status-callback/run-out"
        assert _signed_post(out_status, ringing).status_code == 204
        proc.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as client:
            ready = await client.get(proc.url + "/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            params = _params("ringing", sid="CA" + "4" * 32)
            url = proc.url + "/api/v1/telephony/webhook/wf/u/run-new"
            refused = await client.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
            assert refused.status_code == 503  # a new call
            picked_up, out_answer = _params("in-progress", sid="CA" + "6" * 32), proc.url + "/api/v1/telephony/webhook/wf/u/run-out"
            answer = await client.post(out_answer, data=picked_up, headers={"X-Twilio-Signature": twilio_signature(out_answer, picked_up)})
            assert answer.status_code == 200 and "<Stream" in answer.text  # not new: it was live before the drain
            ended = _params("completed", sid="CA" + "6" * 32)
            assert (await client.post(out_status, data=ended,
                                      headers={"X-Twilio-Signature": twilio_signature(out_status, ended)})).status_code == 204
            await _echo_once(ws)  # the live call still flows
            await ws.close()  # the audio ends; the provider's completed callback comes a moment later
            await asyncio.sleep(1.0)
            assert proc.proc.poll() is None  # still waiting for the call's ending
            status_url = proc.url + "/api/v1/telephony/status-callback/run-drain"
            completed = {**_params("completed"), "Direction": "inbound", "CallDuration": "4"}
            answered = await client.post(status_url, data=completed,
                                         headers={"X-Twilio-Signature": twilio_signature(status_url, completed)})
            assert answered.status_code == 204
        deadline = time.monotonic() + 20
        while proc.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert proc.proc.returncode == 0
        kinds = [json.loads(r["body"])["type"] for r in receiver.requests]
    assert kinds.count("call.ended") == 2 and kinds.count("call.completed") == 2
    assert "draining" in proc.log() and "every live call has ended" in proc.log()


async def test_a_call_still_live_when_the_drain_ends_is_marked_unfinished(gateway_process, tmp_path):
    proc = gateway_process(base_config(tmp_path, shutdown={"drain_seconds": 1}))
    url = proc.url + "/api/v1/telephony/status-callback/run-stuck"
    params = _params("in-progress", sid="CA" + "5" * 32)
    async with httpx.AsyncClient() as client:
        assert (await client.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})).status_code == 204
    proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while proc.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert proc.proc.returncode == 0
    assert "call run=run-stuck is still answered at shutdown" in proc.log()
    again = proc.start()
    async with httpx.AsyncClient() as client:
        call = (await client.get(again.url + "/api/v1/calls/run-stuck", headers={"Authorization": f"Bearer {API_KEY}"})).json()
    assert call["state"] == "answered"
    (entry,) = [e for e in call["timeline"] if e["kind"] == "shutdown.unfinished"]
    assert entry["source"] == "gateway" and entry["data"]["state"] == "answered"


async def test_second_sigterm_ends_the_rest(gateway_process, tmp_path):
    proc = gateway_process(base_config(tmp_path, shutdown={"drain_seconds": 300}))
    ws = await _open_stream(proc)
    await _echo_once(ws)
    proc.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    while proc.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert proc.proc.returncode is not None
    await ws.close()


async def test_a_repeated_sigterm_after_the_drain_ended_changes_nothing(gateway_process, tmp_path):
    """A signal sent to the whole process group arrives twice (the terminal or supervisor's, and
    `make`'s forward): once drained, the second must not force the stop past the app's shutdown."""
    proc = gateway_process(base_config(tmp_path, shutdown={"drain_seconds": 300}))
    proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "every live call has ended" not in proc.log() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    while proc.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert proc.proc.returncode == 0
    log = proc.log()
    assert "every live call has ended" in log
    assert "second SIGTERM" not in log and "Traceback" not in log


async def test_media_session_limit_refuses_and_counts(gateway_process, tmp_path):
    import websockets

    proc = gateway_process(base_config(tmp_path, limits={"max_media_sessions": 1}))
    ws = await _open_stream(proc)
    await _echo_once(ws)
    url = proc.url.replace("http", "ws") + "/api/v1/telephony/ws/wf/u/run-drain"
    try:
        await connect(url, additional_headers={"X-Twilio-Signature": twilio_signature(url, {})}, proxy=None)
    except websockets.InvalidStatus as exc:
        assert exc.response.status_code == 403
    else:
        raise AssertionError("a second media session over the limit must be refused")
    async with httpx.AsyncClient() as client:
        text = (await client.get(proc.url + "/metrics")).text
    assert 'gateway_refusals_total{limit="max_media_sessions"} 1.0' in text
    assert "gateway_media_sessions_active 1.0" in text
    await ws.close()


async def test_metrics_cover_media_codec_agents_and_deliveries(gateway_process, tmp_path):
    from support import Receiver, free_port

    with Receiver() as receiver:
        config = base_config(tmp_path, agent={"url": f"ws://127.0.0.1:{free_port()}/gone", "on_failure": "keep"},
                             webhooks=[{"name": "crm", "events": ["call.*"], "url": receiver.url + "/x",
                                        "allow_networks": ["127.0.0.0/8"]}])
        proc = gateway_process(config)
        ws = await _open_stream(proc)  # the agent is unreachable: a connect failure
        for _ in range(60):  # 60 frames: at least one is timed for the codec histogram
            await ws.send(json.dumps({"event": "media", "streamSid": "MZ" + "9" * 32,
                                      "media": {"payload": base64.b64encode(b"\x7f" * 160).decode()}}))
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as client:
            text = (await client.get(proc.url + "/metrics")).text
        await ws.close()
    assert "gateway_agent_connect_failures_total 1.0" in text
    assert 'gateway_codec_seconds_count{direction="to_agent"}' in text
    assert 'gateway_deliveries_total{outcome="succeeded",subscription="crm"}' in text
    assert 'gateway_delivery_attempt_seconds_count{subscription="crm"}' in text
