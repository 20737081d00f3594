"""`public_url: auto` end to end: a real gateway server finds a fake cloudflared and hands
providers https:// and wss:// URLs on the tunnel's hostname, and checks signatures over them."""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from support import API_KEY, TWILIO_SID, free_port, twilio_signature, vonage_jwt

HOST = "prairie-frog-lantern-oak.trycloudflare.com"
WEBHOOK = "/api/v1/telephony/webhook/wf-t/user-t/run-t"
WS_PATH = "/api/v1/telephony/ws/wf-t/user-t/run-t"
ADMIN = {"Authorization": f"Bearer {API_KEY}"}


def call_params(status="in-progress"):
    return {"CallSid": "CA" + "5" * 32, "AccountSid": TWILIO_SID, "CallStatus": status,
            "From": "+15550100", "To": "+15550199", "Direction": "outbound-api"}


def through_tunnel(server, path, params, host=HOST, sign_host=None):
    """POST as cloudflared delivers it: to the local port, `Host` the public name, signed by Twilio
    over the https:// URL it called."""
    signature = twilio_signature(f"https://{sign_host or host}{path}", params)
    return httpx.post(server.url + path, data=params, headers={"Host": host, "X-Twilio-Signature": signature})


def stream_url(response):
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def auto(fake, **tunnel):
    return {"public_url": "auto", "tunnel": {"metrics": [fake.address], **tunnel}}


def test_twiml_stream_url_and_twilio_signature_use_the_detected_host(gateway_server, fake_cloudflared):
    fake = fake_cloudflared(HOST)
    server = gateway_server(**auto(fake))
    params = call_params()
    answer = through_tunnel(server, WEBHOOK, params)
    assert answer.status_code == 200, answer.text
    url, parameters = stream_url(answer)
    assert url == f"wss://{HOST}{WS_PATH}"
    assert parameters["workflow_run_id"] == "run-t" and parameters["stream_token"]
    # Signed over the local URL (or another host) instead: refused.
    local = httpx.post(server.url + WEBHOOK, data=params,
                       headers={"X-Twilio-Signature": twilio_signature(server.url + WEBHOOK, params)})
    assert local.status_code == 403
    assert through_tunnel(server, WEBHOOK, params, sign_host="other.trycloudflare.com").status_code == 403
    # Status callbacks are checked over the same https:// origin.
    status = "/api/v1/telephony/status-callback/run-t"
    assert through_tunnel(server, status, call_params("completed")).status_code == 204


def test_vonage_ncco_names_the_detected_host(gateway_server, fake_cloudflared):
    fake = fake_cloudflared(HOST)
    server = gateway_server(**auto(fake))
    body = json.dumps({"uuid": "uuid-t", "conversation_uuid": "CON-t", "from": "447700900001",
                       "to": "447700900002", "status": "answered"}).encode()
    response = httpx.post(server.url + WEBHOOK, content=body, headers={
        "Host": HOST, "Content-Type": "application/json", "Authorization": f"Bearer {vonage_jwt(body)}"})
    assert response.status_code == 200, response.text
    (connect_action,) = [a for a in response.json() if a["action"] == "connect"]
    assert connect_action["endpoint"][0]["uri"] == f"wss://{HOST}{WS_PATH}"
    assert connect_action["eventUrl"] == [f"https://{HOST}/api/v1/telephony/status-callback/run-t"]


async def test_media_upgrade_signed_over_the_detected_wss_url_is_accepted(gateway_server, fake_cloudflared):
    fake = fake_cloudflared(HOST)
    server = gateway_server(**auto(fake))
    answer = await asyncio.to_thread(through_tunnel, server, WEBHOOK, call_params())
    url, parameters = stream_url(answer)
    local = f"ws://127.0.0.1:{server.port}{WS_PATH}"
    headers = {"X-Twilio-Signature": twilio_signature(url, {})}  # Twilio signs the wss:// URL from the TwiML
    async with connect(local, additional_headers=headers, compression=None, proxy=None) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "2" * 32, "start": {
            "streamSid": "MZ" + "2" * 32, "accountSid": TWILIO_SID, "callSid": "CA" + "5" * 32, "tracks": ["inbound"],
            "customParameters": parameters, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        await ws.send(json.dumps({"event": "stop", "sequenceNumber": "2", "streamSid": "MZ" + "2" * 32,
                                  "stop": {"accountSid": TWILIO_SID, "callSid": "CA" + "5" * 32}}))
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1000  # the session ran and ended normally
    # Signed over the local ws:// URL: refused at the upgrade.
    bad = {"X-Twilio-Signature": twilio_signature(local, {})}
    with pytest.raises(InvalidStatus) as refused:
        await connect(local, additional_headers=bad, compression=None, proxy=None)
    assert refused.value.response.status_code == 403


def test_tunnel_route_shows_what_was_found(gateway_server, fake_cloudflared):
    fake = fake_cloudflared(HOST)
    server = gateway_server(**auto(fake))
    assert httpx.get(server.url + "/api/v1/tunnel").status_code == 401
    assert httpx.get(server.url + "/api/v1/tunnel", headers={"Authorization": "Bearer nope"}).status_code == 401
    body = httpx.get(server.url + "/api/v1/tunnel", headers=ADMIN).json()
    assert body["mode"] == "tunnel" and body["public_url"] == "auto"
    assert body["origin"] == f"https://{HOST}" and body["websocket_origin"] == f"wss://{HOST}"
    assert body["tunnel"]["hostname"] == HOST and body["tunnel"]["source"] == "quicktunnel"
    assert body["tunnel"]["address"] == fake.address and body["tunnel"]["ready_connections"] == 1
    assert body["tunnel"]["stale"] is False and body["tunnel"]["error"] is None
    assert httpx.get(server.url + "/api/v1/tunnel?refresh=maybe", headers=ADMIN).status_code == 400


def test_without_a_tunnel_it_says_so_and_uses_the_request_host(gateway_server):
    dead = f"127.0.0.1:{free_port()}"
    server = gateway_server(public_url="auto", tunnel={"metrics": dead})
    body = httpx.get(server.url + "/api/v1/tunnel", headers=ADMIN).json()
    assert body["mode"] == "request" and body["tunnel"]["found"] is False
    assert body["origin"] == server.url
    assert body["detail"].startswith(f"no cloudflared tunnel found (connection refused at {dead})")
    params = call_params()
    answer = httpx.post(server.url + WEBHOOK, data=params,
                        headers={"X-Twilio-Signature": twilio_signature(server.url + WEBHOOK, params)})
    assert answer.status_code == 200
    assert stream_url(answer)[0] == f"ws://127.0.0.1:{server.port}{WS_PATH}"


def test_fixed_and_unset_public_url_are_described(gateway_server):
    fixed = gateway_server(public_url="https://gw.example.com")
    body = httpx.get(fixed.url + "/api/v1/tunnel", headers=ADMIN).json()
    assert body["mode"] == "fixed" and body["origin"] == "https://gw.example.com" and body["tunnel"] is None
    unset = gateway_server()
    body = httpx.get(unset.url + "/api/v1/tunnel?refresh=true", headers=ADMIN).json()
    assert body["mode"] == "request" and body["origin"] == unset.url and "public_url is not set" in body["detail"]


def test_tunnel_restart_is_followed(gateway_server, fake_cloudflared):
    fake = fake_cloudflared("first-words.trycloudflare.com")
    server = gateway_server(**auto(fake, refresh_seconds=600, retry_seconds=600))
    assert through_tunnel(server, WEBHOOK, call_params(), host="first-words.trycloudflare.com").status_code == 200
    fake.restart("second-words.trycloudflare.com")
    # The first request through the new hostname meets the old cache: refused, and the refusal
    # makes the gateway look again at once (nothing else would for 600 s).
    params = call_params("completed")
    status_path = "/api/v1/telephony/status-callback/run-t"
    assert through_tunnel(server, status_path, params, host="second-words.trycloudflare.com").status_code == 403
    deadline = time.monotonic() + 5
    while httpx.get(server.url + "/api/v1/tunnel", headers=ADMIN).json()["tunnel"]["hostname"] != "second-words.trycloudflare.com":
        assert time.monotonic() < deadline, "the refusal did not trigger a new lookup"
        time.sleep(0.05)
    assert through_tunnel(server, status_path, params, host="second-words.trycloudflare.com").status_code == 204


def test_refresh_query_looks_again_before_answering(gateway_server, fake_cloudflared):
    port = free_port()
    server = gateway_server(public_url="auto", tunnel={"metrics": [f"127.0.0.1:{port}"], "refresh_seconds": 600,
                                                       "retry_seconds": 600})
    assert httpx.get(server.url + "/api/v1/tunnel", headers=ADMIN).json()["mode"] == "request"
    fake_cloudflared(HOST, port=port)
    body = httpx.get(server.url + "/api/v1/tunnel?refresh=true", headers=ADMIN).json()
    assert body["mode"] == "tunnel" and body["origin"] == f"https://{HOST}"
