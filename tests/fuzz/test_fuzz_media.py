"""Fuzzing both media socket message streams and the agent's messages, on a real uvicorn server
with real WebSocket clients: Twilio's JSON media messages, Vonage's binary audio and JSON
events, and an external agent (docs/agent-protocol.md) sending anything at all. Whatever
arrives, the session goes on (a good frame afterwards is still echoed, or the call ends
cleanly), nothing is logged at ERROR, the socket never closes with 1011 (internal error), and
the call's `media.ended` entry is written. Each example is a whole call, so these run a
fifth of the profile's examples."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import xml.etree.ElementTree as ET

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from fuzz_support import ErrorLog, json_values
from support import API_KEY, TWILIO_SID, ServerThread, base_config, free_port, twilio_signature, vonage_jwt

RUNS = itertools.count()
CALLS = settings(max_examples=max(5, settings.default.max_examples // 5),
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

b64 = st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode())



def start_server(tmp_path_factory, **overrides):
    from gateway.app import create_app
    from gateway.config import parse_config

    tmp = tmp_path_factory.mktemp("fuzz-media")
    return ServerThread(create_app(parse_config(base_config(tmp, **overrides), env={}))).__enter__()


@pytest.fixture(scope="module")
def errors():
    handler = ErrorLog()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory, errors):
    server = start_server(tmp_path_factory)
    yield server
    server.__exit__(None, None, None)


AGENT_PORT = free_port()


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory, errors):
    server = start_server(tmp_path_factory, agent={"url": f"ws://127.0.0.1:{AGENT_PORT}/agent", "connect_timeout": 2})
    yield server
    server.__exit__(None, None, None)


async def media_ended(server, run_id: str) -> dict:
    async with httpx.AsyncClient() as http:
        async def ended():
            call = (await http.get(f"{server.url}/api/v1/calls/{run_id}", headers={"Authorization": f"Bearer {API_KEY}"})).json()
            return next((t["data"] for t in call.get("timeline", []) if t["kind"] == "media.ended"), None)

        deadline = asyncio.get_running_loop().time() + 15
        while (found := await ended()) is None:
            assert asyncio.get_running_loop().time() < deadline, "media.ended was never written"
            await asyncio.sleep(0.05)
        return found


# --- Twilio -----------------------------------------------------------------------------------

twilio_message = st.one_of(
    st.builds(lambda e, body, extra: json.dumps({"event": e, e: body, **extra}),
              st.sampled_from(["media", "dtmf", "mark", "start", "connected", "other"]),
              json_values | st.fixed_dictionaries({}, optional={"payload": b64 | json_values, "track": st.text(max_size=10),
                                                                 "digit": json_values, "name": json_values, "streamSid": json_values}),
              st.dictionaries(st.sampled_from(["streamSid", "sequenceNumber"]), json_values, max_size=2)),
    st.text(max_size=100),
    st.binary(max_size=200),
)


async def twilio_answer(server, run_id: str) -> tuple[str, dict[str, str], str]:
    """Answer a Twilio call for `run_id`: (stream URL, its <Parameter>s, the CallSid)."""
    url = f"{server.url}/api/v1/telephony/webhook/wf-z/user-z/{run_id}"
    params = {"CallSid": "CA" + run_id.encode().hex().ljust(32, "0")[:32], "AccountSid": TWILIO_SID, "CallStatus": "in-progress"}
    async with httpx.AsyncClient() as http:
        answer = await http.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
    assert answer.status_code == 200, answer.text
    stream = ET.fromstring(answer.text).find("./Connect/Stream")
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}, params["CallSid"]


async def twilio_call(server, run_id: str, messages: list) -> tuple[dict, int | None]:
    ws_url, custom, call_sid = await twilio_answer(server, run_id)
    sid = "MZ" + "5" * 32
    async with connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(ws_url, {})}, compression=None, proxy=None) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "streamSid": sid, "start": {
            "streamSid": sid, "accountSid": TWILIO_SID, "callSid": call_sid, "tracks": ["inbound"],
            "customParameters": custom, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        try:
            for message in messages:
                await ws.send(message)
            good = {"event": "media", "streamSid": sid, "media": {"track": "inbound", "payload": base64.b64encode(b"\xff" * 160).decode()}}
            for _ in range(3):
                await ws.send(json.dumps(good))
            while True:  # the echo agent plays the good frames back: the session is alive
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if reply.get("event") == "media":
                    break
            await ws.send(json.dumps({"event": "stop", "streamSid": sid, "stop": {}}))
            await asyncio.wait_for(ws.wait_closed(), 10)
        except websockets.ConnectionClosed:
            pass
        close_code = ws.close_code
    return await media_ended(server, run_id), close_code


@CALLS
@given(messages=st.lists(twilio_message, max_size=8))
@example(messages=['{"event":"media","streamSid":"MZ1","media":{"payload":"===="}}', b"\x00" * 10, "x" * 70000])
@example(messages=['{"event":"start","start":{"streamSid":"MZ2","customParameters":{"stream_token":"v2.\\u00b2.x"}}}'])
@example(messages=['{"event":"dtmf","dtmf":{"digit":"' + "9" * 100 + '"}}', '{"event":"mark","mark":{"name":null}}'])
@example(messages=['{"event":"dtmf","streamSid":"MZ' + "5" * 32 + '","dtmf":{"digit":"\\ud800"}}'])  # a lone surrogate, stored
@example(messages=["[" * 5000])
def test_twilio_media_stream(echo_server, errors, messages):
    run_id = f"fz-mt-{next(RUNS)}"
    ended, close_code = asyncio.run(twilio_call(echo_server, run_id, messages))
    assert close_code != 1011
    assert errors.take() == []
    assert ended["frames_in"] >= 0


@CALLS
@given(token=st.text(max_size=30) | st.sampled_from(["v2.\u00b2.x", "v2.\u0661.x", "v2." + "9" * 12 + ".x", ""]))
@example(token="v2.\u00b2.x")  # check_stream_token raised ValueError: int("²")
def test_twilio_stream_token_is_checked_not_crashed_on(echo_server, errors, token):
    async def scenario():
        run_id = f"fz-mk-{next(RUNS)}"
        url = echo_server.url.replace("http", "ws") + f"/api/v1/telephony/ws/wf-z/user-z/{run_id}"
        async with connect(url, additional_headers={"X-Twilio-Signature": twilio_signature(url, {})}, compression=None, proxy=None) as ws:
            await ws.send(json.dumps({"event": "connected"}))
            await ws.send(json.dumps({"event": "start", "streamSid": "MZ1", "start": {"streamSid": "MZ1", "customParameters": {"stream_token": token}}}))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
        return info.value.rcvd.code if info.value.rcvd else None

    assert asyncio.run(scenario()) == 1008
    assert errors.take() == []


# --- Vonage -----------------------------------------------------------------------------------

vonage_message = st.one_of(
    st.binary(max_size=1300),
    st.builds(lambda e, extra: json.dumps({"event": e, **extra}),
              st.sampled_from(["websocket:connected", "websocket:dtmf", "websocket:media:update", "other"]),
              st.dictionaries(st.sampled_from(["content-type", "digit", "duration"]) | st.text(max_size=5), json_values, max_size=3)),
    st.text(max_size=100),
)


async def vonage_call(server, run_id: str, messages: list) -> tuple[dict, int | None]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{server.url}/api/v1/telephony/webhook/wf-z/user-z/{run_id}",
                                params={"uuid": f"uuid-{run_id}", "to": "1", "from": "2"},
                                headers={"Authorization": f"Bearer {vonage_jwt(b'')}"})
    assert answer.status_code == 200, answer.text
    endpoint = answer.json()[0]["endpoint"][0]
    async with connect(endpoint["uri"], compression=None, proxy=None) as ws:
        await ws.send(json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"], **endpoint["headers"]}))
        try:
            for message in messages:
                await ws.send(message)
            for _ in range(3):
                await ws.send(b"\x00\x01" * 320)
            while not isinstance(await asyncio.wait_for(ws.recv(), 10), bytes):
                pass  # the echo agent plays the good frames back: the session is alive
            await ws.close()
        except websockets.ConnectionClosed:
            pass
        close_code = ws.close_code
    return await media_ended(server, run_id), close_code


@CALLS
@given(messages=st.lists(vonage_message, max_size=8))
@example(messages=['{"event":"websocket:dtmf","digit":"\\ud800"}'])  # a lone surrogate, stored
@example(messages=[b"\x00", b"\x00" * 641, '{"event":"websocket:connected","content-type":"audio/l16;rate=8000"}', "[" * 5000])
def test_vonage_media_stream(echo_server, errors, messages):
    run_id = f"fz-mv-{next(RUNS)}"
    ended, close_code = asyncio.run(vonage_call(echo_server, run_id, messages))
    assert close_code != 1011
    assert errors.take() == []
    assert ended["frames_in"] >= 0


# --- the agent --------------------------------------------------------------------------------

agent_message = st.one_of(
    st.builds(lambda t, extra: json.dumps({"type": t, **extra}),
              st.sampled_from(["clear", "mark", "context", "transcript", "intent", "entity", "annotations", "other"]),
              st.dictionaries(st.sampled_from(["name", "data", "role", "text", "final", "value", "confidence", "reason"]), json_values, max_size=4)),
    st.text(max_size=100),
    st.binary(max_size=700),
)


async def agent_call(server, run_id: str, messages: list) -> dict:
    done = asyncio.Event()

    async def handler(ws):
        try:
            json.loads(await ws.recv())  # start
            for message in messages:
                await ws.send(message)
            await ws.send(json.dumps({"type": "hangup", "reason": "fuzz done"}))
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass
        finally:
            done.set()

    async with serve(handler, "127.0.0.1", AGENT_PORT, compression=None):
        ws_url, custom, _ = await twilio_answer(server, run_id)
        async with connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(ws_url, {})}, compression=None, proxy=None) as ws:
            await ws.send(json.dumps({"event": "start", "streamSid": "MZ9", "start": {"streamSid": "MZ9", "customParameters": custom}}))
            await ws.send(json.dumps({"event": "media", "streamSid": "MZ9", "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}))
            try:
                async for _ in ws:  # the agent's hangup ends the call: the gateway closes this socket
                    pass
            except websockets.ConnectionClosed:
                pass
            close_code = ws.close_code
        await asyncio.wait_for(done.wait(), 10)
    ended = await media_ended(server, run_id)
    return {"ended": ended, "close_code": close_code}


@CALLS
@given(messages=st.lists(agent_message, max_size=10))
@example(messages=['{"type":"entity","name":"' + "n" * 300 + '","value":{"a":[1,2]}}', '{"type":"context","data":[]}',
                   '{"type":"transcript","role":"user","text":"hi","final":"no"}', '{"type":"mark","name":""}', "{", b""])
@example(messages=['{"type":"intent","name":"x","confidence":1e308,"data":{"\\ud800":1}}'])  # the store's UTF-8 refused it:
# the session's writer died, so media.ended (and every later write of the call) was lost
@example(messages=['{"type":"transcript","role":"user","text":"\\udfff"}', "[" * 5000])
def test_agent_messages(agent_server, errors, messages):
    run_id = f"fz-ma-{next(RUNS)}"
    result = asyncio.run(agent_call(agent_server, run_id, messages))
    assert result["close_code"] != 1011
    assert errors.take() == []
    assert result["ended"]["reason"] == "agent hangup"
