"""A workflow as Dograh exports it today (the shape of Dograh's own fixtures: every node's data
carries `is_start`/`is_end`, canvas bookkeeping, other node types; the webhook node's payload is
the template Dograh's SDK generates) imported by a real `gateway serve`, whose `call.ended`
deliveries carry every Dograh variable with Dograh's meaning."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import wave
from pathlib import Path

import httpx
import pytest

from gateway.calls.disposition import call_disposition
from gateway.calls.record import CallRecord
from gateway.calls.states import CallState
from gateway.webhooks.dograh import load_dograh_workflow
from media.test_bridge import TwilioClient
from support import API_KEY, TWILIO_SID, Receiver, base_config, eventually, twilio_signature

FIXTURE = Path(__file__).parent / "fixtures" / "dograh_export.json"
RUN = "run-media"  # the run TwilioClient's answer webhook opens
CREDENTIAL = "0b7f2c7e-4a8e-4a57-9d44-2a4bb1d3c001"


def test_an_export_of_today_imports_and_unknown_webhook_keys_are_warnings(caplog):
    caplog.set_level(logging.WARNING, "gateway.config")
    credentials = {CREDENTIAL: {"credential_type": "api_key", "credential_data": {"header_name": "X-Key", "api_key": "k1"}}}
    default, crm = load_dograh_workflow(json.loads(FIXTURE.read_text().replace("RECEIVER", "https://crm.example")),
                                        credentials)
    assert (default.name, crm.name, crm.method) == ("webhook", "notify-crm", "PUT")
    assert default.events == crm.events == ["call.ended"]
    assert default.payload_defaults == {"call_disposition": "{{gathered_context.call_disposition | default('')}}"}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'node_version'" in warnings[0] and "nodes[5] (2003)" in warnings[0]
    assert not any("is_start" in w or "is_end" in w for w in warnings)


@pytest.mark.parametrize(("record", "expected"), [
    (CallRecord("r", state=CallState.COMPLETED), "completed"),
    (CallRecord("r", state=CallState.COMPLETED, voicemail=True), "voicemail_detected"),
    (CallRecord("r", state=CallState.BUSY), "busy"),
    (CallRecord("r", state=CallState.NO_ANSWER), "no-answer"),
    (CallRecord("r", state=CallState.FAILED), "failed"),
    (CallRecord("r", state=CallState.CANCELED), "canceled"),
    (CallRecord("r", state=CallState.ANSWERED), None),
    (CallRecord("r", state=CallState.COMPLETED, gathered_context={"call_disposition": "XFER"}), "XFER"),
])
def test_the_disposition_is_the_agents_else_the_outcome(record, expected):
    assert call_disposition(record) == expected


def _mono(content: bytes) -> tuple[int, int]:
    with wave.open(io.BytesIO(content)) as wav:
        return wav.getnchannels(), wav.getnframes()


async def test_dograh_variables_reach_the_receiver_through_gateway_serve(gateway_process, tmp_path):
    with Receiver() as receiver:
        workflow = tmp_path / "workflow.json"
        workflow.write_text(FIXTURE.read_text().replace("RECEIVER", receiver.url))
        proc = gateway_process(base_config(tmp_path, recording=True, workflows=[{
            "path": str(workflow), "allow_networks": ["127.0.0.0/8"],
            "credentials": {CREDENTIAL: {"credential_type": "bearer_token", "credential_data": {"token": "tok"}}}}]))
        client = await TwilioClient.open(proc)
        for _ in range(50):  # one second of the caller, echoed by the built-in agent
            await client.media(b"\xff" * 160)
        await client.receive_json()
        await client.send({"event": "stop", "stop": {}})
        await client.ws.wait_closed()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        await eventually(lambda: any(t["kind"] == "media.ended" for t in
                                     httpx.get(f"{proc.url}/api/v1/calls/{RUN}", headers=headers).json()["timeline"]))
        params = {"CallSid": "CA" + "7" * 32, "AccountSid": TWILIO_SID, "CallStatus": "completed", "CallDuration": "3"}
        url = f"{proc.url}/api/v1/telephony/status-callback/{RUN}"
        assert httpx.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)}).status_code == 204
        requests = {r["path"]: r for r in await asyncio.to_thread(receiver.wait_for, 2)}
    call = httpx.get(f"{proc.url}/api/v1/calls/{RUN}", headers=headers).json()
    default = json.loads(requests["/dograh/default"]["body"])
    assert default["call_id"] == RUN and default["first_name"] is None and default["rsvp"] is None
    assert default["duration"] == 3  # cost_info.call_duration_seconds
    assert default["call_disposition"] == "completed"  # added: the template did not set it
    assert default["transcript_url"].startswith(proc.url + f"/api/v1/transcripts/{RUN}.json?")
    assert default["recording_url"].startswith(proc.url + f"/api/v1/recordings/{RUN}.wav?")
    stereo = httpx.get(default["recording_url"])
    assert stereo.status_code == 200
    for key in ("user_recording_url", "bot_recording_url"):  # each side alone, as its own WAV
        side = httpx.get(default[key])
        assert side.status_code == 200 and side.headers["content-type"] == "audio/wav"
        channels, frames = _mono(side.content)
        assert channels == 1 and frames >= 16000 * 0.9
    assert default["user_recording_url"].endswith("&channel=caller")
    assert default["bot_recording_url"].endswith("&channel=agent")
    crm = requests[f"/dograh/crm/{RUN}"]
    assert crm["method"] == "PUT" and crm["headers"]["authorization"] == "Bearer tok"
    body = json.loads(crm["body"])
    assert body == {"run_id": RUN, "workflow": "wf-m", "campaign": None, "at": call["created_at"],
                    "disposition": "completed", "call_disposition": "crm-set-completed"}  # the template's own kept
    assert "ignored key 'node_version'" in proc.log()
