"""Telnyx on a real loopback gateway: signed TeXML webhooks, the lifecycle, the media socket."""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from support import API_KEY, carrier_config, eventually, telnyx_headers
from gateway.media.token import check_stream_token

RUN = "run-tx"
WEBHOOK = f"/api/v1/telephony/webhook/wf-t/user-t/{RUN}"
STATUS = f"/api/v1/telephony/status-callback/{RUN}"
SID = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"


@pytest.fixture
def server(gateway_server, tmp_path):
    return gateway_server(providers=carrier_config(tmp_path)["providers"])


def params(status="ringing", **extra):
    return {"AccountSid": "acct", "CallSid": SID, "CallSidLegacy": "CA1", "From": "+13125550001", "To": "+13125550002",
            "ConnectionId": "texml-app-1", "ApiVersion": "2010-04-01", "CallStatus": status, "Direction": "inbound", **extra}


def post(server, path, fields, *, headers=None, body=None):
    body = urlencode(fields).encode() if body is None else body
    signed = telnyx_headers(body) if headers is None else headers
    return httpx.post(server.url + path, content=body,
                      headers={"Content-Type": "application/x-www-form-urlencoded", **signed}, timeout=10)


def admin(server, path):
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)


def stream_of(texml):
    stream = ET.fromstring(texml).find("./Connect/Stream")
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def test_signed_answer_gives_a_texml_stream_and_creates_the_call(server):
    response = post(server, WEBHOOK, params())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    url, parameters = stream_of(response.text)
    assert url == f"ws://127.0.0.1:{server.port}/api/v1/telephony/ws/wf-t/user-t/{RUN}"
    assert check_stream_token(server.app.state.gateway.secret_key, RUN, parameters["stream_token"], now=time.time(),
                              workflow_id="wf-t", user_id="user-t") is None
    call = admin(server, f"/api/v1/calls/{RUN}").json()
    assert call["provider"] == "telnyx" and call["provider_call_id"] == SID and call["state"] == "ringing"


def test_get_instruction_fetch_is_signed_over_an_empty_body(server):
    query = urlencode(params())
    response = httpx.get(f"{server.url}/api/v1/telephony/inbound/wf-t/user-t?{query}", headers=telnyx_headers(b""))
    assert response.status_code == 200, response.text
    run = stream_of(response.text)[1]["workflow_run_id"]
    assert admin(server, f"/api/v1/calls/{run}").json()["direction"] == "inbound"


@pytest.mark.parametrize("headers, reason", [
    ({"telnyx-signature-ed25519": base64.b64encode(b"x" * 64).decode(), "telnyx-timestamp": str(int(time.time()))},
     "signature does not match"),
    (telnyx_headers(b"other body"), "signature does not match"),
    ("stale", "timestamp outside the 300 s tolerance"),
    ({"telnyx-signature-ed25519": "x"}, "missing telnyx-timestamp header"),
])
def test_bad_signatures_are_refused_and_nothing_is_stored(server, headers, reason):
    body = urlencode(params()).encode()
    if headers == "stale":
        headers = telnyx_headers(body, timestamp=int(time.time()) - 400)
    response = post(server, WEBHOOK, params(), headers=headers, body=body)
    assert response.status_code == 403 and reason in response.json()["detail"]
    assert admin(server, f"/api/v1/calls/{RUN}").status_code == 404


@pytest.mark.parametrize("body, reason", [
    (b"CallStatus=ringing", "missing CallSid"),
    (b"CallSid=%ff%fe", "not valid UTF-8"),
    (b"CallSid=a&SequenceNumber=x", "SequenceNumber"),
])
def test_malformed_bodies_are_refused_and_nothing_is_stored(server, body, reason):
    response = post(server, STATUS, {}, body=body)
    assert response.status_code == 400 and reason in response.json()["detail"]
    assert admin(server, f"/api/v1/calls/{RUN}").status_code == 404


def test_status_callbacks_duplicates_disorder_terminal_and_voicemail(server):
    assert post(server, WEBHOOK, params("in-progress", SequenceNumber="2")).status_code == 200
    for status, seq in (("ringing", "1"), ("in-progress", "3"), ("in-progress", "3")):
        assert post(server, STATUS, params(status, SequenceNumber=seq)).status_code == 204
    assert post(server, STATUS, params(AnsweredBy="machine")).status_code == 204
    assert post(server, STATUS, params("completed", SequenceNumber="5", CallDuration="12")).status_code == 204
    assert post(server, STATUS, params("in-progress", SequenceNumber="6")).status_code == 204
    call = admin(server, f"/api/v1/calls/{RUN}").json()
    assert call["state"] == "completed" and call["duration"] == 12 and call["voicemail"] is True
    outcomes = [t["outcome"] for t in call["timeline"]]
    assert outcomes == ["created", "late", "duplicate", "late", "late", "applied", "terminal"]
    events = [e.type for e in asyncio.run(server.app.state.gateway.store.list_events(run_id=RUN))]
    assert events == ["call.answered", "call.voicemail_detected", "call.completed", "call.ended"]


class TelnyxStream:
    """Speaks Telnyx's documented media-stream messages."""

    def __init__(self, ws, stream_id="32de0dea-53cb-4b21-89a4-9e1819c043bc"):
        self.ws, self.stream_id, self.seq = ws, stream_id, 0

    @classmethod
    async def open(cls, server, encoding="PCMU"):
        url, parameters = stream_of(post(server, WEBHOOK, params("in-progress")).text)
        ws = await connect(url, compression=None, proxy=None)
        stream = cls(ws)
        await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        await stream.send({"event": "start", "start": {
            "user_id": "u", "call_control_id": SID, "call_session_id": "sess", "from": "+1", "to": "+2",
            "custom_parameters": parameters, "media_format": {"encoding": encoding, "sample_rate": 8000, "channels": 1}}})
        return stream

    async def send(self, message):
        self.seq += 1
        await self.ws.send(json.dumps({**message, "sequence_number": str(self.seq), "stream_id": self.stream_id}))

    async def media(self, payload: bytes, chunk: int):
        await self.send({"event": "media", "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20),
                                                     "payload": base64.b64encode(payload).decode()}})


@pytest.mark.parametrize("encoding, decode, encode", [("PCMU", audioop.ulaw2lin, audioop.lin2ulaw),
                                                      ("PCMA", audioop.alaw2lin, audioop.lin2alaw)])
async def test_media_echo_in_exact_frames_marks_and_dtmf(server, encoding, decode, encode):
    stream = await TelnyxStream.open(server, encoding)
    t = np.arange(8000) / 8000
    signal = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    audio = encode(signal.tobytes(), 2)
    received: list[bytes] = []

    async def reader():
        while len(received) < 40:
            message = json.loads(await asyncio.wait_for(stream.ws.recv(), 5))
            if message["event"] == "media":
                assert set(message) == {"event", "media"} and set(message["media"]) == {"payload"}
                received.append(base64.b64decode(message["media"]["payload"]))

    task = asyncio.create_task(reader())
    start = time.monotonic()
    for i in range(50):
        await stream.media(audio[i * 160:(i + 1) * 160], i + 1)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
    await asyncio.wait_for(task, 10)
    assert all(len(frame) == 160 for frame in received)
    echoed = np.frombuffer(decode(b"".join(received), 2), dtype=np.int16)
    assert np.abs(echoed).max() > 4000  # the tone came back, in the stream's own codec
    await stream.send({"event": "dtmf", "occurred_at": "2026-12-07T10:00:00Z", "dtmf": {"digit": "5"}})
    await stream.send({"event": "mark", "mark": {"name": "not-ours"}})
    await stream.ws.send('{"event":"media","media":{"payload":"@@@"}}')
    await stream.ws.send("not json")
    await stream.send({"event": "stop", "stop": {"user_id": "u", "call_control_id": SID}})
    await stream.ws.wait_closed()
    call = await eventually(lambda: (c := admin(server, f"/api/v1/calls/{RUN}").json()) and
                            any(t["kind"] == "media.ended" for t in c["timeline"]) and c)
    ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
    assert ended["frames_in"] == 50 and ended["misframed"] == 0 and ended["bad_messages"] == 2
    assert ended["reason"] == "provider sent stop"
    assert any(t["kind"] == "dtmf" and t["data"] == {"digit": "5"} for t in call["timeline"])


@pytest.mark.parametrize("first, reason", [
    ({"event": "start", "stream_id": "s", "start": {"custom_parameters": {"stream_token": "v1.1.bad"}}}, "stream token"),
    ({"event": "start", "stream_id": "s", "start": {}}, "missing stream token"),
    ({"event": "media", "media": {"payload": ""}}, "expected start"),
    ({"event": "start", "start": {}}, "start has no stream_id"),
])
async def test_a_socket_without_a_valid_start_is_closed_before_audio(server, first, reason):
    post(server, WEBHOOK, params("in-progress"))
    async with connect(f"ws://127.0.0.1:{server.port}/api/v1/telephony/ws/wf-t/user-t/{RUN}", proxy=None) as ws:
        await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        await ws.send(json.dumps(first))
        await ws.wait_closed()
    assert ws.close_code == 1008 and reason in ws.close_reason


def test_inbound_call_then_callbacks_to_the_provider_path_match_by_call_sid(server):
    answer = post(server, "/api/v1/telephony/inbound/wf-t/user-t", params("ringing", CallSid="v3:inbound-1"))
    run = stream_of(answer.text)[1]["workflow_run_id"]
    assert post(server, "/api/v1/telephony/status-callback/telnyx", params("completed", CallSid="v3:inbound-1")).status_code == 204
    call = admin(server, f"/api/v1/calls/{run}").json()
    assert call["state"] == "completed" and call["direction"] == "inbound" and call["provider"] == "telnyx"


def test_oversized_and_unconfigured_are_refused(server, gateway_server, tmp_path):
    big = b"CallSid=x&Pad=" + b"x" * 70_000
    assert post(server, STATUS, {}, body=big, headers=telnyx_headers(big)).status_code == 413
    bare = gateway_server()  # Twilio and Vonage only
    refused = post(bare, WEBHOOK, params())
    assert refused.status_code == 403 and "telnyx is not configured" in refused.json()["detail"]


def test_a_call_control_event_is_refused_by_name(server):
    body = json.dumps({"data": {"record_type": "event", "event_type": "call.initiated", "id": "e-1",
                                "occurred_at": "2026-12-07T10:00:00Z", "payload": {"call_control_id": "v3:x"}}}).encode()
    response = httpx.post(server.url + STATUS, content=body, headers={"Content-Type": "application/json", **telnyx_headers(body)})
    assert response.status_code == 400 and "Call Control event" in response.json()["detail"]
    assert admin(server, f"/api/v1/calls/{RUN}").status_code == 404
