"""Plivo on a real loopback gateway: V3-signed webhooks, the lifecycle, the signed media socket."""

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

from support import API_KEY, carrier_config, eventually, plivo_headers
from gateway.media.token import check_stream_token
from gateway.providers.plivo import decode_token

RUN = "run-pv"
WEBHOOK = f"/api/v1/telephony/webhook/wf-p/user-p/{RUN}"
STATUS = f"/api/v1/telephony/status-callback/{RUN}"
UUID = "b77e037d-4119-44b5-902d-25826b654539"


@pytest.fixture
def server(gateway_server, tmp_path):
    return gateway_server(providers=carrier_config(tmp_path)["providers"])


def params(status="ringing", **extra):
    return {"CallUUID": UUID, "From": "14155550100", "To": "14155550199", "CallStatus": status, "Direction": "inbound",
            "Event": "StartApp", **extra}


def post(server, path, fields, *, headers=None, body=None):
    url = server.url + path
    body = urlencode(fields).encode() if body is None else body
    signed = plivo_headers("POST", url, fields) if headers is None else headers
    return httpx.post(url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded", **signed}, timeout=10)


def admin(server, path):
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)


def stream_of(xml):
    stream = ET.fromstring(xml).find("./Stream")
    return stream.text, stream.attrib


def test_signed_answer_gives_a_bidirectional_stream_and_creates_the_call(server):
    response = post(server, WEBHOOK, params("in-progress"))
    assert response.status_code == 200, response.text
    url, attrib = stream_of(response.text)
    assert url == f"ws://127.0.0.1:{server.port}/api/v1/telephony/ws/wf-p/user-p/{RUN}"
    assert attrib["bidirectional"] == "true" and attrib["keepCallAlive"] == "true"
    assert attrib["contentType"] == "audio/x-mulaw;rate=8000"
    token = decode_token(attrib["extraHeaders"].split("streamtoken=", 1)[1])
    assert check_stream_token(server.app.state.gateway.secret_key, RUN, token, now=time.time(), workflow_id="wf-p", user_id="user-p") is None
    call = admin(server, f"/api/v1/calls/{RUN}").json()
    assert call["provider"] == "plivo" and call["provider_call_id"] == UUID and call["state"] == "answered"


def test_get_answer_is_signed_over_its_query(server):
    query = urlencode(params("in-progress"))
    url = f"{server.url}/api/v1/telephony/inbound/wf-p/user-p?{query}"
    response = httpx.get(url, headers=plivo_headers("GET", url))
    assert response.status_code == 200, response.text
    assert admin(server, "/api/v1/calls?limit=5").json()["calls"][0]["provider"] == "plivo"


@pytest.mark.parametrize("tamper, reason", [
    ("token", "signature does not match"),
    ("field", "signature does not match"),
    ("nonce", "missing X-Plivo-Signature-V3-Nonce header"),
])
def test_bad_signatures_are_refused_and_nothing_is_stored(server, tamper, reason):
    fields = params()
    url = server.url + WEBHOOK
    headers = plivo_headers("POST", url, fields, token="wrong" if tamper == "token" else "test-plivo-auth-token")
    if tamper == "field":
        fields = {**fields, "CallStatus": "completed"}
    if tamper == "nonce":
        del headers["X-Plivo-Signature-V3-Nonce"]
    response = post(server, WEBHOOK, fields, headers=headers)
    assert response.status_code == 403 and reason in response.json()["detail"]
    assert admin(server, f"/api/v1/calls/{RUN}").status_code == 404


@pytest.mark.parametrize("fields, reason", [
    ({"CallStatus": "ringing"}, "missing CallUUID"),
    ({"CallUUID": "a b"}, "CallUUID is not a valid identifier"),
])
def test_malformed_bodies_are_refused_and_nothing_is_stored(server, fields, reason):
    response = post(server, STATUS, fields)
    assert response.status_code == 400 and reason in response.json()["detail"]
    assert admin(server, f"/api/v1/calls/{RUN}").status_code == 404


def test_invalid_utf8_is_refused(server):
    body = b"CallUUID=%ff%fe"
    response = post(server, STATUS, {}, body=body, headers=plivo_headers("POST", server.url + STATUS, {"CallUUID": "x"}))
    assert response.status_code == 400 and "UTF-8" in response.json()["detail"]


def test_callbacks_duplicates_disorder_terminal_and_voicemail(server):
    assert post(server, WEBHOOK, params("in-progress")).status_code == 200
    assert post(server, STATUS, params("ringing", Event="Ring")).status_code == 204  # late
    assert post(server, STATUS, params("in-progress")).status_code == 204  # duplicate
    assert post(server, STATUS, {"CallUUID": UUID, "Machine": "true", "Event": "MachineDetection",
                                 "CallStatus": "in-progress"}).status_code == 204
    assert post(server, STATUS, params("completed", Event="Hangup", Duration="21", BillDuration="60",
                                       HangupCause="NORMAL_CLEARING")).status_code == 204
    assert post(server, STATUS, params("completed", Event="Hangup", Duration="21")).status_code == 204
    call = admin(server, f"/api/v1/calls/{RUN}").json()
    assert call["state"] == "completed" and call["duration"] == 21 and call["voicemail"] is True
    assert [t["outcome"] for t in call["timeline"]] == ["created", "late", "duplicate", "duplicate", "applied", "terminal"]
    events = [e.type for e in asyncio.run(server.app.state.gateway.store.list_events(run_id=RUN))]
    assert events == ["call.answered", "call.voicemail_detected", "call.completed", "call.ended"]


class PlivoStream:
    """Speaks Plivo's documented audio-stream messages, over an upgrade signed as Plivo signs it."""

    def __init__(self, ws, stream_id=UUID.replace("b7", "c8")):
        self.ws, self.stream_id, self.seq = ws, stream_id, 0

    @classmethod
    async def open(cls, server, *, sign_over=None, headers=None, extra_headers=None):
        url, attrib = stream_of(post(server, WEBHOOK, params("in-progress")).text)
        signed = headers if headers is not None else plivo_headers("GET", sign_over(url) if sign_over else url)
        ws = await connect(url, additional_headers=signed, compression=None, proxy=None)
        stream = cls(ws)
        await stream.send({"event": "start", "start": {
            "callId": UUID, "streamId": stream.stream_id, "accountId": "MAXXXXXXXXXXXXXXXXXX", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
            "extra_headers": extra_headers if extra_headers is not None else attrib["extraHeaders"]})
        return stream

    async def send(self, message):
        self.seq += 1
        body = {**message, "sequenceNumber": self.seq}
        if message["event"] != "start":
            body["streamId"] = self.stream_id
        await self.ws.send(json.dumps(body))

    async def media(self, payload: bytes, chunk: int):
        await self.send({"event": "media", "media": {"track": "inbound", "timestamp": str(1705312200000 + chunk * 20),
                                                     "chunk": chunk, "payload": base64.b64encode(payload).decode()}})


async def test_media_echo_in_exact_frames_checkpoints_and_dtmf(server):
    stream = await PlivoStream.open(server)
    t = np.arange(8000) / 8000
    audio = audioop.lin2ulaw((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes(), 2)
    received: list[bytes] = []

    async def reader():
        while len(received) < 40:
            message = json.loads(await asyncio.wait_for(stream.ws.recv(), 5))
            if message["event"] == "playAudio":
                assert message["media"]["contentType"] == "audio/x-mulaw" and message["media"]["sampleRate"] == 8000
                received.append(base64.b64decode(message["media"]["payload"]))

    task = asyncio.create_task(reader())
    start = time.monotonic()
    for i in range(50):
        await stream.media(audio[i * 160:(i + 1) * 160], i + 1)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
    await asyncio.wait_for(task, 10)
    assert all(len(frame) == 160 for frame in received)
    assert np.abs(np.frombuffer(audioop.ulaw2lin(b"".join(received), 2), dtype=np.int16)).max() > 4000
    await stream.send({"event": "dtmf", "dtmf": {"track": "inbound", "digit": "7", "timestamp": "1705312250000"}})
    await stream.send({"event": "playedStream", "name": "m-1"})
    await stream.send({"event": "clearedAudio"})
    await stream.ws.send('{"event":"media","media":{"payload":"%%%"}}')
    await stream.ws.close()
    call = await eventually(lambda: (c := admin(server, f"/api/v1/calls/{RUN}").json()) and
                            any(t["kind"] == "media.ended" for t in c["timeline"]) and c)
    ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
    assert ended["frames_in"] == 50 and ended["misframed"] == 0 and ended["bad_messages"] == 1
    assert any(t["kind"] == "dtmf" and t["data"] == {"digit": "7"} for t in call["timeline"])


async def test_an_upgrade_signed_over_its_https_spelling_is_accepted(server):
    stream = await PlivoStream.open(server, sign_over=lambda url: "http" + url[2:])
    await stream.media(b"\xff" * 160, 1)
    message = json.loads(await asyncio.wait_for(stream.ws.recv(), 5))
    assert message["event"] == "playAudio"
    await stream.ws.close()


async def test_a_badly_signed_upgrade_is_refused(server):
    import websockets

    post(server, WEBHOOK, params("in-progress"))
    url = f"ws://127.0.0.1:{server.port}/api/v1/telephony/ws/wf-p/user-p/{RUN}"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await connect(url, additional_headers=plivo_headers("GET", url, token="wrong"), proxy=None)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("case, reason", [
    ("no token", "missing stream token"),
    ("wrong token", "stream token"),
])
async def test_bad_upgrades_and_starts_are_closed_before_audio(server, case, reason):
    post(server, WEBHOOK, params("in-progress"))
    url = f"ws://127.0.0.1:{server.port}/api/v1/telephony/ws/wf-p/user-p/{RUN}"
    headers = plivo_headers("GET", url)
    extra = {"no token": "userId=1", "wrong token": "streamtoken=" + "76312e312e78"}.get(case, "")
    async with connect(url, additional_headers=headers, proxy=None) as ws:
        with pytest.raises(Exception):
            await ws.send(json.dumps({"event": "start", "start": {"streamId": "s", "callId": UUID}, "extra_headers": extra}))
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1008 and reason in ws.close_reason


async def test_an_unsigned_plivo_socket_is_told_by_its_start_and_admitted_by_its_token(server):
    stream = await PlivoStream.open(server, headers={})
    await stream.media(b"\xff" * 160, 1)
    assert json.loads(await asyncio.wait_for(stream.ws.recv(), 5))["event"] == "playAudio"
    await stream.ws.close()


def test_inbound_call_then_hangup_to_the_provider_path_match_by_call_uuid(server):
    answer = post(server, "/api/v1/telephony/inbound/wf-p/user-p", params("in-progress", CallUUID="in-1"))
    assert answer.status_code == 200
    assert post(server, "/api/v1/telephony/status-callback/plivo", params("completed", CallUUID="in-1", Event="Hangup",
                                                                         Duration="3")).status_code == 204
    (call,) = [c for c in admin(server, "/api/v1/calls?limit=10").json()["calls"] if c["provider_call_id"] == "in-1"]
    assert call["state"] == "completed" and call["direction"] == "inbound" and call["duration"] == 3


def test_oversized_and_unconfigured_are_refused(server, gateway_server):
    big = {"CallUUID": "x", "Pad": "x" * 70_000}
    assert post(server, STATUS, big).status_code == 413
    bare = gateway_server()
    refused = post(bare, WEBHOOK, params())
    assert refused.status_code == 403 and "plivo is not configured" in refused.json()["detail"]
