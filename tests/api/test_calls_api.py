"""Placing and ending calls through the API: the real gateway on loopback, the real SDKs
talking to local stand-ins of Twilio's and Vonage's REST APIs, signed provider callbacks."""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from dial.fakes import FakeTwilio, FakeVonage, twilio_callback, vonage_event
from gateway.media.token import check_stream_token
from support import API_KEY, TWILIO_SID, TWILIO_TOKEN, VONAGE_API_KEY, VONAGE_SECRET, free_port, twilio_signature

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def rsa_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return pem, public


@pytest.fixture
def fakes():
    with FakeTwilio() as twilio, FakeVonage() as vonage:
        yield twilio, vonage


def providers(fakes, rsa_key, **vonage_extra):
    twilio, vonage = fakes
    return {
        "twilio": {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "api_base_url": twilio.url},
        "vonage": {"signature_secret": VONAGE_SECRET, "api_key": VONAGE_API_KEY, "application_id": "app-1",
                   "private_key": rsa_key[0], "api_base_url": vonage.url, **vonage_extra},
    }


@pytest.fixture
def gateway(gateway_server, fakes, rsa_key):
    def start(**overrides):
        overrides.setdefault("providers", providers(fakes, rsa_key))
        return gateway_server(**overrides)

    return start


def api(server, method, path, **kw):
    return httpx.request(method, server.url + path, headers={**AUTH, **kw.pop("headers", {})}, timeout=30, **kw)


def place(server, **fields):
    body = {"provider": "twilio", "to": "+14155550100", "from": "+14155550199", "workflow_id": "wf-1",
            "user_id": "user-1", **fields}
    return api(server, "POST", "/api/v1/calls", json=body)


def call(server, run_id):
    return api(server, "GET", f"/api/v1/calls/{run_id}").json()


async def event_types(server, run_id):
    return [e.type for e in await server.app.state.gateway.store.list_events(run_id=run_id)]




# -- placing -----------------------------------------------------------------------------------

async def test_twilio_call_is_recorded_then_dialed_with_the_gateways_own_urls(gateway, fakes):
    twilio, _ = fakes
    server = gateway()
    response = await asyncio.to_thread(place, server, initial_context={"customer": "Ann"}, machine_detection=True)
    assert response.status_code == 201, response.text
    record = response.json()
    run_id = record["workflow_run_id"]
    assert response.headers["location"] == f"/api/v1/calls/{run_id}"
    (sent,) = twilio.of("create")
    assert record["state"] == "initiated" and record["provider"] == "twilio" and record["provider_call_id"] == sent["sid"]
    assert record["direction"] == "outbound" and record["from"] == "+14155550199" and record["to"] == "+14155550100"
    assert record["initial_context"] == {"customer": "Ann"}
    assert sent["body"]["Url"] == [f"{server.url}/api/v1/telephony/webhook/wf-1/user-1/{run_id}"]
    assert sent["body"]["StatusCallback"] == [f"{server.url}/api/v1/telephony/status-callback/{run_id}"]
    assert sent["body"]["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert sent["body"]["MachineDetection"] == ["Enable"]

    # the provider fetches the answer URL it was given: TwiML to the media socket of this run
    url = sent["body"]["Url"][0]
    params = {"CallSid": sent["sid"], "AccountSid": TWILIO_SID, "CallStatus": "in-progress", "From": "+14155550199",
              "To": "+14155550100", "Direction": "outbound-api"}
    answer = await asyncio.to_thread(httpx.post, url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
    assert answer.status_code == 200
    stream = ET.fromstring(answer.text).find("./Connect/Stream")
    assert stream.get("url").endswith(f"/api/v1/telephony/ws/wf-1/user-1/{run_id}")

    for sequence, status in enumerate(["initiated", "ringing", "in-progress", "completed"]):
        await asyncio.to_thread(twilio_callback, sent, status, sequence=sequence, CallDuration="12")
    final = await asyncio.to_thread(call, server, run_id)
    assert final["state"] == "completed" and final["duration"] == 12
    assert [t["kind"] for t in final["timeline"]][:2] == ["dial", "dial"]
    types = await event_types(server, run_id)
    assert types.count("call.initiated") == 1 and types[-1] == "call.ended"


async def test_call_lifecycle_events_are_emitted_once_each(gateway, fakes):
    twilio, _ = fakes
    server = gateway()
    run_id = (await asyncio.to_thread(place, server)).json()["workflow_run_id"]
    (sent,) = twilio.of("create")
    for sequence, status in enumerate(["initiated", "ringing", "in-progress", "completed"]):
        await asyncio.to_thread(twilio_callback, sent, status, sequence=sequence)
    assert await event_types(server, run_id) == [
        "call.initiated", "call.ringing", "call.answered", "call.completed", "call.ended"]


async def test_public_url_builds_every_provider_url(gateway, fakes):
    twilio, _ = fakes
    server = gateway(public_url="https://gw.example.com")
    run_id = (await asyncio.to_thread(place, server)).json()["workflow_run_id"]
    body = twilio.of("create")[0]["body"]
    assert body["Url"] == [f"https://gw.example.com/api/v1/telephony/webhook/wf-1/user-1/{run_id}"]
    assert body["StatusCallback"] == [f"https://gw.example.com/api/v1/telephony/status-callback/{run_id}"]


async def test_provider_refusal_fails_the_call_with_the_providers_reason(gateway_server, rsa_key):
    refuse = lambda kind, n, req: (400, {"code": 21211, "message": "The 'To' number +14155550100 is not a valid phone number.",  # noqa: E731
                                        "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400})
    with FakeTwilio(refuse) as twilio, FakeVonage() as vonage:
        server = gateway_server(providers=providers((twilio, vonage), rsa_key))
        response = await asyncio.to_thread(place, server)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["detail"] == "twilio refused the call: The 'To' number +14155550100 is not a valid phone number."
    assert problem["provider_error"] == {"provider": "twilio", "reason": problem["detail"].split(": ", 1)[1],
                                         "status": 400, "code": "21211"}
    run_id = problem["workflow_run_id"]
    stored = await asyncio.to_thread(call, server, run_id)
    assert stored["state"] == "failed" and stored["annotations"]["dial_error"]["code"] == "21211"
    assert problem["call"]["state"] == "failed"
    listed = await asyncio.to_thread(api, server, "GET", "/api/v1/calls")
    assert [c["state"] for c in listed.json()["calls"]] == ["failed"]  # no orphan left initiated
    assert await event_types(server, run_id) == ["call.initiated", "call.failed", "call.ended"]
    assert [t["kind"] for t in stored["timeline"]] == ["dial", "dial.refused", "dial"]


async def test_unreachable_provider_fails_the_call(gateway_server, rsa_key):
    dead = f"http://127.0.0.1:{free_port()}"
    config = providers((FakeTwilio(), FakeVonage()), rsa_key)
    config["twilio"]["api_base_url"] = dead
    server = gateway_server(providers=config, dial={"request_timeout": 2})
    response = await asyncio.to_thread(place, server)
    assert response.status_code == 502 and "no answer from the Twilio API" in response.json()["detail"]
    assert response.json()["call"]["state"] == "failed"
    assert "dial_interrupted" not in response.json()["call"]["annotations"]  # it never left: safe to call again


async def test_bad_requests_name_the_problem(gateway, fakes):
    twilio, _ = fakes
    server = gateway()
    cases = [
        ({"to": "+1415"}, "to: must be an E.164 phone number"),
        ({"to": None}, "to: "),
        ({"workflow_id": "a/b"}, "workflow_id: must be 1-128 characters"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"provider": "exotel"}, "provider: "),
        ({"machine_detection": "sometimes"}, "machine_detection: must be true, false"),
    ]
    for fields, expected in cases:
        response = await asyncio.to_thread(place, server, **fields)
        assert response.status_code == 400 and expected in response.json()["detail"], (fields, response.text)
    missing = await asyncio.to_thread(api, server, "POST", "/api/v1/calls", json={"to": "+14155550100"})
    assert "workflow_id: required key is missing" in missing.json()["detail"]
    no_from = await asyncio.to_thread(place, server, **{"from": None})
    assert no_from.status_code == 400 and "from: required" in no_from.json()["detail"]
    not_json = await asyncio.to_thread(api, server, "POST", "/api/v1/calls", content=b"to=1")
    assert not_json.status_code == 400 and "invalid JSON" in not_json.json()["detail"]
    unauthenticated = await asyncio.to_thread(httpx.post, server.url + "/api/v1/calls", json={})
    assert unauthenticated.status_code == 401
    assert twilio.of("create") == []


async def test_defaults_and_a_provider_that_cannot_dial(gateway_server, fakes, rsa_key):
    twilio, _ = fakes
    config = providers(fakes, rsa_key)
    del config["vonage"]["private_key"]
    server = gateway_server(providers=config, dial={"default_provider": "twilio", "caller_id": {"twilio": "+14155550123"}})
    response = await asyncio.to_thread(api, server, "POST", "/api/v1/calls",
                                       json={"to": "+14155550100", "workflow_id": "w", "user_id": "u"})
    assert response.status_code == 201 and response.json()["from"] == "+14155550123"
    assert twilio.of("create")[0]["body"]["From"] == ["+14155550123"]
    vonage = await asyncio.to_thread(place, server, provider="vonage")
    assert vonage.status_code == 400 and "application_id and private_key" in vonage.json()["detail"]


async def test_vonage_call_with_answer_url_and_event_url(gateway, fakes, rsa_key):
    _, vonage = fakes
    server = gateway()
    response = await asyncio.to_thread(place, server, provider="vonage", machine_detection="message_end")
    assert response.status_code == 201, response.text
    run_id = response.json()["workflow_run_id"]
    (sent,) = vonage.of("create")
    assert response.json()["provider_call_id"] == sent["uuid"]
    assert sent["body"]["answer_url"] == [f"{server.url}/api/v1/telephony/webhook/wf-1/user-1/{run_id}"]
    assert sent["body"]["event_url"] == [f"{server.url}/api/v1/telephony/status-callback/{run_id}"]
    assert sent["body"]["to"] == [{"type": "phone", "number": "14155550100"}]
    assert sent["body"]["advanced_machine_detection"] == {"behavior": "continue", "mode": "detect_beep"}
    token = sent["headers"]["authorization"].removeprefix("Bearer ")
    assert jwt.decode(token, rsa_key[1], algorithms=["RS256"])["application_id"] == "app-1"
    for status in ["started", "ringing", "answered", "completed"]:
        await asyncio.to_thread(vonage_event, sent, status, duration="7")
    assert (await asyncio.to_thread(call, server, run_id))["state"] == "completed"


async def test_vonage_inline_ncco_connects_straight_to_the_media_socket(gateway, fakes):
    _, vonage = fakes
    server = gateway(dial={"vonage_answer": "ncco"})
    run_id = (await asyncio.to_thread(place, server, provider="vonage")).json()["workflow_run_id"]
    body = vonage.of("create")[0]["body"]
    assert "answer_url" not in body
    (connect_action,) = body["ncco"]
    endpoint = connect_action["endpoint"][0]
    ws_host = server.url.replace("http://", "ws://")
    assert endpoint["uri"] == f"{ws_host}/api/v1/telephony/ws/wf-1/user-1/{run_id}"
    assert endpoint["content-type"] == "audio/l16;rate=16000"
    assert connect_action["eventUrl"] == [f"{server.url}/api/v1/telephony/status-callback/{run_id}"]
    headers = endpoint["headers"]
    assert headers["workflow_run_id"] == run_id
    assert check_stream_token(b"test-secret-key", run_id, headers["stream_token"], now=time.time(),
                              workflow_id="wf-1", user_id="user-1") is None


# -- hanging up --------------------------------------------------------------------------------

async def test_hangup_cancels_a_ringing_call_and_completes_an_answered_one(gateway, fakes):
    twilio, _ = fakes
    server = gateway()
    ringing = (await asyncio.to_thread(place, server)).json()["workflow_run_id"]
    answered = (await asyncio.to_thread(place, server)).json()["workflow_run_id"]
    first, second = twilio.of("create")
    await asyncio.to_thread(twilio_callback, first, "ringing", sequence=1)
    await asyncio.to_thread(twilio_callback, second, "in-progress", sequence=2)
    twilio.statuses[second["sid"]] = "in-progress"
    response = await asyncio.to_thread(api, server, "POST", f"/api/v1/calls/{ringing}/hangup", json={"reason": "wrong number"})
    assert response.status_code == 202, response.text
    assert response.json() == {"workflow_run_id": ringing, "hangup": "requested", "state": "ringing", "provider": "twilio",
                               "provider_call_id": first["sid"], "provider_status": "canceled"}
    response = await asyncio.to_thread(api, server, "POST", f"/api/v1/calls/{answered}/hangup")
    assert response.status_code == 202 and response.json()["provider_status"] == "completed"
    assert [(u["params"]["sid"], u["body"]["Status"]) for u in twilio.of("update")] == [
        (first["sid"], ["canceled"]), (second["sid"], ["completed"])]
    timeline = (await asyncio.to_thread(call, server, ringing))["timeline"]
    assert timeline[-1]["kind"] == "hangup" and timeline[-1]["data"]["reason"] == "wrong number"
    assert timeline[-1]["data"]["requested_by"] == "api"

    await asyncio.to_thread(twilio_callback, second, "completed", sequence=3)
    ended = await asyncio.to_thread(api, server, "POST", f"/api/v1/calls/{answered}/hangup")
    assert ended.status_code == 409 and ended.json()["state"] == "completed"
    unknown = await asyncio.to_thread(api, server, "POST", "/api/v1/calls/no-such-run/hangup")
    assert unknown.status_code == 404
    unauthenticated = await asyncio.to_thread(httpx.post, f"{server.url}/api/v1/calls/{ringing}/hangup")
    assert unauthenticated.status_code == 401
    assert len(twilio.of("update")) == 2


async def test_vonage_hangup_and_a_provider_error(gateway_server, rsa_key):
    script = lambda kind, n, req: (500, {"title": "Internal Error", "detail": "try again"}) if kind == "update" and n == 1 else None  # noqa: E731
    with FakeTwilio() as twilio, FakeVonage(script) as vonage:
        server = gateway_server(providers=providers((twilio, vonage), rsa_key))
        first = (await asyncio.to_thread(place, server, provider="vonage")).json()["workflow_run_id"]
        second = (await asyncio.to_thread(place, server, provider="vonage")).json()["workflow_run_id"]
        response = await asyncio.to_thread(api, server, "POST", f"/api/v1/calls/{first}/hangup")
        assert response.status_code == 202
        failed = await asyncio.to_thread(api, server, "POST", f"/api/v1/calls/{second}/hangup")
    (created_first, created_second) = vonage.of("create")
    first_update, second_update = vonage.of("update")
    assert first_update["path"] == f"/v1/calls/{created_first['uuid']}" and first_update["body"] == {"action": "hangup"}
    assert failed.status_code == 502 and failed.json()["provider_error"]["status"] == 500
    assert "vonage did not end the call: try again" == failed.json()["detail"]
    assert second_update["path"] == f"/v1/calls/{created_second['uuid']}"


# -- the agent's hangup goes through the same REST path -----------------------------------------

async def _answer_and_stream(server, sent):
    """Answer the call as Twilio would and open its media stream; returns the socket."""
    url = sent["body"]["Url"][0]
    params = {"CallSid": sent["sid"], "AccountSid": TWILIO_SID, "CallStatus": "in-progress", "From": "+14155550199",
              "To": "+14155550100", "Direction": "outbound-api"}
    async with httpx.AsyncClient() as client:
        answer = await client.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
    stream = ET.fromstring(answer.text).find("./Connect/Stream")
    ws_url = stream.get("url")
    custom = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    ws = await connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(ws_url, {})},
                       compression=None, proxy=None)
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "1" * 32, "start": {
        "streamSid": "MZ" + "1" * 32, "accountSid": TWILIO_SID, "callSid": sent["sid"], "tracks": ["inbound"],
        "customParameters": custom, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
    return ws


async def _wait_for_update(fake, count=1, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(fake.of("update")) >= count:
            return fake.of("update")
        await asyncio.sleep(0.05)
    raise AssertionError(f"no hangup reached the provider (updates: {fake.of('update')})")


async def test_agent_hangup_message_ends_the_call_at_the_provider(gateway, fakes):
    twilio, _ = fakes

    async def agent(ws):
        await ws.recv()  # the start message
        await ws.send(json.dumps({"type": "hangup", "reason": "goodbye said"}))
        async for _ in ws:
            pass

    async with serve(agent, "127.0.0.1", 0, compression=None) as agent_server:
        port = agent_server.sockets[0].getsockname()[1]
        server = gateway(agent={"url": f"ws://127.0.0.1:{port}/agent"})
        run_id = (await asyncio.to_thread(place, server)).json()["workflow_run_id"]
        (sent,) = twilio.of("create")
        await asyncio.to_thread(twilio_callback, sent, "in-progress", sequence=2)
        twilio.statuses[sent["sid"]] = "in-progress"
        ws = await _answer_and_stream(server, sent)
        updates = await _wait_for_update(twilio)
        await ws.close()
    assert [(u["params"]["sid"], u["body"]["Status"]) for u in updates] == [(sent["sid"], ["completed"])]
    timeline = (await asyncio.to_thread(call, server, run_id))["timeline"]
    hangup = next(t for t in timeline if t["kind"] == "hangup")
    assert hangup["data"] == {"reason": "goodbye said", "requested_by": "agent", "provider_status": "completed"}


async def test_unreachable_agent_with_on_failure_hangup_ends_the_call(gateway, fakes):
    twilio, _ = fakes
    server = gateway(agent={"url": f"ws://127.0.0.1:{free_port()}/nobody", "connect_timeout": 1, "on_failure": "hangup"})
    await asyncio.to_thread(place, server)
    (sent,) = twilio.of("create")
    await asyncio.to_thread(twilio_callback, sent, "in-progress", sequence=2)
    ws = await _answer_and_stream(server, sent)
    updates = await _wait_for_update(twilio)
    await ws.close()
    assert updates[0]["body"]["Status"] == ["completed"] and len(updates) == 1
