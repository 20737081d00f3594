"""The media bridge end to end: real gateway server, real WebSocket clients speaking Twilio's
and Vonage's documented messages, the built-in echo agent and external agent servers."""

from __future__ import annotations

import asyncio
import threading
import audioop
import base64
import json
import time
import xml.etree.ElementTree as ET

import httpx
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from support import API_KEY, TWILIO_SID, eventually, twilio_signature, vonage_jwt

RUN = "run-media"
WEBHOOK = f"/api/v1/telephony/webhook/wf-m/user-m/{RUN}"


def speech_like(seconds: float, rate: int = 8000, seed: int = 1) -> np.ndarray:
    """A voiced, syllable-shaped test signal (harmonics under a 4 Hz envelope), int16."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum((0.5 / k) * np.sin(k * phase) for k in range(1, 12) if k * 140 < rate / 2 * 0.8)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    rng = np.random.default_rng(seed)
    signal = voice * envelope + 0.01 * rng.standard_normal(t.size)
    return (signal / np.max(np.abs(signal)) * 12000).astype(np.int16)


def best_correlation(sent: np.ndarray, got: np.ndarray, max_lag: int = 2000) -> float:
    sent = sent.astype(np.float64)
    got = got.astype(np.float64)
    best = 0.0
    for lag in range(0, max_lag):
        n = min(sent.size, got.size - lag)
        if n < 1000:
            break
        a, b = sent[:n], got[lag:lag + n]
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        if denom:
            best = max(best, float(np.dot(a, b) / denom))
    return best


async def twilio_answer(server) -> tuple[str, dict[str, str]]:
    params = {"CallSid": "CA" + "7" * 32, "AccountSid": TWILIO_SID, "CallStatus": "in-progress",
              "From": "+15550001", "To": "+15550002", "Direction": "inbound"}
    url = server.url + WEBHOOK
    async with httpx.AsyncClient() as client:
        response = await client.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
    assert response.status_code == 200, response.text
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


class TwilioClient:
    """Speaks Twilio Media Streams' documented messages."""

    def __init__(self, ws, stream_sid="MZ" + "1" * 32):
        self.ws = ws
        self.sid = stream_sid
        self.seq = 0
        self.chunk = 0

    @classmethod
    async def open(cls, server, *, params=None, signature=None):
        ws_url, answer_params = await twilio_answer(server)
        ws = await connect(ws_url, additional_headers={"X-Twilio-Signature": signature or twilio_signature(ws_url, {})},
                           compression=None, proxy=None)
        client = cls(ws)
        await client.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await client.send({"event": "start", "start": {
            "streamSid": client.sid, "accountSid": TWILIO_SID, "callSid": "CA" + "7" * 32, "tracks": ["inbound"],
            "customParameters": params if params is not None else answer_params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        return client

    async def send(self, message):
        self.seq += 1
        message = {**message, "sequenceNumber": str(self.seq)}
        if message["event"] != "connected":
            message["streamSid"] = self.sid
        await self.ws.send(json.dumps(message))

    async def media(self, mulaw: bytes):
        self.chunk += 1
        await self.send({"event": "media", "media": {"track": "inbound", "chunk": str(self.chunk),
                                                     "timestamp": str(self.chunk * 20), "payload": base64.b64encode(mulaw).decode()}})

    async def receive_json(self, timeout=5.0):
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))


def admin_call(server, run_id=RUN):
    return httpx.get(f"{server.url}/api/v1/calls/{run_id}", headers={"Authorization": f"Bearer {API_KEY}"}).json()


async def test_twilio_echo_round_trip_in_real_time(gateway_server):
    server = gateway_server()
    client = await TwilioClient.open(server)
    signal = speech_like(2.0)
    mulaw = audioop.lin2ulaw(signal.tobytes(), 2)
    received: list[bytes] = []

    async def reader():
        while True:
            message = await client.receive_json()
            assert set(message) == {"event", "streamSid", "media"} and message["event"] == "media"
            assert message["streamSid"] == client.sid
            received.append(base64.b64decode(message["media"]["payload"]))
            if len(received) >= 100:
                return

    task = asyncio.create_task(reader())
    start = time.monotonic()
    for i in range(100):
        await client.media(mulaw[i * 160:(i + 1) * 160])
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
    await asyncio.wait_for(task, 5)
    assert all(len(frame) == 160 for frame in received)
    echoed = np.frombuffer(audioop.ulaw2lin(b"".join(received), 2), dtype=np.int16)
    assert best_correlation(signal, echoed) > 0.95
    await client.send({"event": "stop", "stop": {"accountSid": TWILIO_SID, "callSid": "CA" + "7" * 32}})
    await client.ws.wait_closed()
    call = await eventually(lambda: (c := admin_call(server)) and any(t["kind"] == "media.ended" for t in c["timeline"]) and c)
    kinds = [t["kind"] for t in call["timeline"]]
    assert "media.started" in kinds and "media.ended" in kinds
    ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
    assert ended["frames_in"] == 100 and ended["frames_out"] >= 100 and ended["inbound_dropped"] == 0
    events = [e.type for e in await server.app.state.gateway.store.list_events(run_id=RUN)]
    assert events.count("call.started") == 1


async def vonage_endpoint(server) -> dict:
    """The NCCO's websocket endpoint of a signed Vonage answer webhook."""
    token = vonage_jwt(b"")
    async with httpx.AsyncClient() as http:
        answer = await http.get(server.url + WEBHOOK, params={"uuid": "aaaaaaaa-0000-0000-0000-000000000001", "to": "1", "from": "2"},
                                headers={"Authorization": f"Bearer {token}"})
    return answer.json()[0]["endpoint"][0]


async def test_vonage_echo_round_trip(gateway_server):
    server = gateway_server()
    endpoint = await vonage_endpoint(server)
    async with connect(endpoint["uri"], compression=None, proxy=None) as ws:
        await ws.send(json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"], **endpoint["headers"]}))
        signal = speech_like(1.0, rate=16000)
        pcm = signal.tobytes()
        got = bytearray()
        for i in range(50):
            await ws.send(pcm[i * 640:(i + 1) * 640])
            await asyncio.sleep(0.02)
        while len(got) < 50 * 640:
            frame = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(frame, bytes) and len(frame) == 640
            got += frame
        echoed = np.frombuffer(bytes(got), dtype=np.int16)
        assert best_correlation(signal, echoed) > 0.99
        await ws.send(json.dumps({"event": "websocket:dtmf", "digit": "5", "duration": 260}))
        await eventually(lambda: any(t["kind"] == "dtmf" for t in admin_call(server)["timeline"]))


class AgentServer:
    """An external voice agent on loopback, scripted by the test."""

    def __init__(self, script=None):
        self.script = script
        self.messages: list = []
        self.starts: list[dict] = []
        self.headers: list = []
        self.done = asyncio.Event()

    async def handler(self, ws):
        self.headers.append(dict(ws.request.headers))
        start = json.loads(await ws.recv())
        self.starts.append(start)
        try:
            if self.script:
                await self.script(self, ws)
            else:
                async for message in ws:
                    self.messages.append(message)
                    if isinstance(message, bytes):
                        try:
                            await ws.send(message)
                        except websockets.ConnectionClosed:
                            pass  # keep reading what the gateway sent before it closed
        except websockets.ConnectionClosed:
            pass
        finally:
            self.done.set()

    async def __aenter__(self):
        self.server = await serve(self.handler, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/agent"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


async def test_external_agent_gets_start_dtmf_and_stop(gateway_server):
    async with AgentServer() as agent:
        server = gateway_server(agent={"url": agent.url, "headers": {"X-Agent-Key": "k1"},
                                       "audio": {"encoding": "pcm16", "sample_rate": 24000}})
        client = await TwilioClient.open(server)
        await client.media(b"\xff" * 160)
        await client.send({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "7"}})
        await client.send({"event": "stop", "stop": {}})
        await asyncio.wait_for(agent.done.wait(), 5)
    start = agent.starts[0]
    assert start["type"] == "start" and start["call"]["workflow_run_id"] == RUN and start["call"]["provider"] == "twilio"
    assert start["call"]["from"] == "+15550001" and start["audio"] == {"encoding": "pcm16", "sample_rate": 24000, "frame_ms": 20}
    assert agent.headers[0]["x-agent-key"] == "k1"
    audio = [m for m in agent.messages if isinstance(m, bytes)]
    assert [len(a) for a in audio] == [960]  # 20 ms at 24 kHz pcm16
    texts = [json.loads(m) for m in agent.messages if isinstance(m, str)]
    assert {"type": "dtmf", "digit": "7"} in texts
    assert texts[-1]["type"] == "stop"


async def test_marks_and_clear_within_the_lead(gateway_server):
    async def script(agent, ws):
        await ws.send(b"\x00\x10" * 16000 * 2)  # 2 s of agent audio (pcm16 16 kHz)
        await ws.send(json.dumps({"type": "mark", "name": "after-speech"}))
        await asyncio.sleep(0.3)
        await ws.send(json.dumps({"type": "clear"}))
        async for message in ws:
            agent.messages.append(message)

    async with AgentServer(script) as agent:
        server = gateway_server(agent={"url": agent.url})
        client = await TwilioClient.open(server)
        await client.media(b"\xff" * 160)
        media_before_clear, events = 0, []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                message = await client.receive_json(timeout=0.5)
            except asyncio.TimeoutError:
                break
            events.append(message["event"])
            if message["event"] == "clear":
                break
            media_before_clear += message["event"] == "media"
        assert "clear" in events
        # 300 ms of real time + the 160 ms lead: never the whole 2 s (100 frames).
        assert 10 <= media_before_clear <= 8 + int(0.3 / 0.02) + 4
        after = []
        with pytest.raises(asyncio.TimeoutError):
            while True:
                after.append(await client.receive_json(timeout=0.4))
        assert [m for m in after if m["event"] == "media"] == []
        await asyncio.wait_for(_agent_got(agent, lambda m: m.get("type") == "mark" and m.get("cleared")), 3)
        await client.send({"event": "stop", "stop": {}})


async def _agent_got(agent, predicate):
    while True:
        for message in agent.messages:
            if isinstance(message, str) and predicate(json.loads(message)):
                return
        await asyncio.sleep(0.02)


async def test_twilio_mark_echo_reaches_agent(gateway_server):
    async def script(agent, ws):
        await ws.send(b"\x00\x00" * 320 * 3)  # 3 frames
        await ws.send(json.dumps({"type": "mark", "name": "m1"}))
        async for message in ws:
            agent.messages.append(message)

    async with AgentServer(script) as agent:
        server = gateway_server(agent={"url": agent.url})
        client = await TwilioClient.open(server)
        seen = []
        while "mark" not in seen:
            message = await client.receive_json()
            seen.append(message["event"])
            if message["event"] == "mark":
                assert message == {"event": "mark", "streamSid": client.sid, "mark": {"name": "m1"}}
                await client.send({"event": "mark", "mark": {"name": "m1"}})  # Twilio echoes it once played
        assert seen == ["media", "media", "media", "mark"]
        await asyncio.wait_for(_agent_got(agent, lambda m: m == {"type": "mark", "name": "m1"}), 3)
        await client.send({"event": "stop", "stop": {}})


async def test_what_the_session_queued_for_the_store_is_written_when_it_ends(gateway_server):
    """A slow store (every write 0.1 s) and an agent that says 60 lines and hangs up: the session
    ends at once, and every line and then `media.ended` are still written (nothing is cut off
    by a deadline shorter than the writes take)."""
    async def script(agent, ws):
        for n in range(60):
            await ws.send(json.dumps({"type": "transcript", "role": "agent", "text": f"line {n}", "final": True}))
        await ws.send(json.dumps({"type": "hangup", "reason": "done"}))
        async for message in ws:
            agent.messages.append(message)

    async with AgentServer(script) as agent:
        server = gateway_server(agent={"url": agent.url})
        store = server.app.state.gateway.store
        write = store.record_activity

        async def slow_write(*args, **kwargs):  # the store's latency, injected
            await asyncio.sleep(0.1)
            return await write(*args, **kwargs)

        store.record_activity = slow_write
        client = await TwilioClient.open(server)
        await client.ws.wait_closed()
        call = await eventually(lambda: (c := admin_call(server)) and any(t["kind"] == "media.ended" for t in c["timeline"])
                                and c, timeout=30)
    kinds = [t["kind"] for t in call["timeline"]]
    assert kinds[-1] == "media.ended" and kinds.count("transcript") == 60
    lines = [t["data"]["text"] for t in call["timeline"] if t["kind"] == "transcript"]
    assert lines == [f"line {n}" for n in range(60)]
    events = [e for e in await store.list_events(run_id=RUN) if e.type == "conversation.transcript"]
    assert len(events) == 60


async def test_agent_messages_update_the_call(gateway_server):
    async def script(agent, ws):
        for message in [
            {"type": "context", "data": {"resolution": "booked"}},
            {"type": "transcript", "role": "user", "text": "I'd like a table", "final": True},
            {"type": "transcript", "role": "user", "text": "I'd", "final": False},
            {"type": "intent", "name": "book_table", "confidence": 0.93},
            {"type": "entity", "name": "party_size", "value": 4},
            {"type": "annotations", "data": {"sentiment": "positive"}},
            {"type": "no-such-type"},
        ]:
            await ws.send(json.dumps(message))
        await ws.send("not json at all")
        await ws.send(json.dumps({"type": "hangup", "reason": "done"}))
        async for message in ws:
            agent.messages.append(message)

    async with AgentServer(script) as agent:
        server = gateway_server(agent={"url": agent.url})
        client = await TwilioClient.open(server)
        await client.ws.wait_closed()  # the agent hung up: the provider socket closes
        call = await eventually(lambda: (c := admin_call(server)) and any(t["kind"] == "media.ended" for t in c["timeline"]) and c)
    assert call["gathered_context"] == {"resolution": "booked", "party_size": 4}
    assert call["annotations"] == {"sentiment": "positive"}
    ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
    assert ended["reason"] == "agent hangup" and ended["agent_bad_messages"] == 1
    events = [e.type for e in await server.app.state.gateway.store.list_events(run_id=RUN)]
    assert events.count("conversation.transcript") == 1
    assert "conversation.intent_detected" in events and "conversation.entity_captured" in events


async def test_unreachable_agent_fails_call_cleanly(gateway_server):
    from support import free_port

    server = gateway_server(agent={"url": f"ws://127.0.0.1:{free_port()}/nobody", "connect_timeout": 1})
    client = await TwilioClient.open(server)
    await asyncio.wait_for(client.ws.wait_closed(), 5)
    call = await eventually(lambda: (c := admin_call(server)) and any(t["kind"] == "agent.failed" for t in c["timeline"]) and c)
    failed = next(t for t in call["timeline"] if t["kind"] == "agent.failed")
    assert "cannot connect to agent" in failed["data"]["reason"]
    stored = [e.type for e in await server.app.state.gateway.store.list_events(run_id=RUN)]
    assert "call.agent_failed" in stored


async def test_agent_disconnect_mid_call_with_keep_stays_on_line(gateway_server):
    async def script(agent, ws):
        await ws.close()

    async with AgentServer(script) as agent:
        server = gateway_server(agent={"url": agent.url, "on_failure": "keep"})
        client = await TwilioClient.open(server)
        await asyncio.wait_for(agent.done.wait(), 3)
        await eventually(lambda: any(t["kind"] == "agent.failed" for t in admin_call(server)["timeline"]))
        await client.media(b"\xff" * 160)  # the call is still up
        await asyncio.sleep(0.1)
        assert client.ws.state.name == "OPEN"
        await client.send({"event": "stop", "stop": {}})


async def test_provider_drop_stops_the_agent(gateway_server):
    async with AgentServer() as agent:
        server = gateway_server(agent={"url": agent.url})
        client = await TwilioClient.open(server)
        await client.media(b"\xff" * 160)
        client.ws.transport.abort()  # no close frame: the socket just drops
        await asyncio.wait_for(agent.done.wait(), 5)
    texts = [json.loads(m) for m in agent.messages if isinstance(m, str)]
    assert texts and texts[-1]["type"] == "stop"


async def test_bad_input_is_counted_and_the_session_goes_on(gateway_server):
    server = gateway_server()
    client = await TwilioClient.open(server)
    await client.ws.send("{not json")
    await client.ws.send(json.dumps({"event": "media", "streamSid": client.sid, "media": {"payload": "!!!notbase64"}}))
    await client.ws.send(json.dumps({"event": "unknown-event", "streamSid": client.sid}))
    await client.ws.send(b"\x00" * 100)  # binary on a Twilio socket
    await client.ws.send("x" * 70000)  # over the message limit
    await client.media(b"\xff" * 100)  # wrong frame size: counted, still played
    await client.media(b"\xff" * 160)
    got = await client.receive_json()
    assert got["event"] == "media"
    await client.send({"event": "stop", "stop": {}})
    call = await eventually(lambda: (c := admin_call(server)) and any(t["kind"] == "media.ended" for t in c["timeline"]) and c)
    ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
    assert ended["bad_messages"] == 4 and ended["misframed"] == 1 and ended["frames_in"] == 2


async def test_socket_without_valid_token_is_closed_before_audio(gateway_server):
    server = gateway_server()
    client = await TwilioClient.open(server, params={"stream_token": "v2.9999999999.forged"})
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.receive_json()
    assert info.value.rcvd.code == 1008 and "token" in info.value.rcvd.reason
    call = admin_call(server)
    assert not any(t["kind"].startswith("media") for t in call["timeline"])


async def test_bad_upgrade_signature_is_refused(gateway_server):
    server = gateway_server()
    with pytest.raises(websockets.InvalidStatus) as info:
        await TwilioClient.open(server, signature="bm90IGEgc2lnbmF0dXJl")
    assert info.value.response.status_code == 403


async def test_vonage_socket_that_is_not_vonage_is_closed(gateway_server):
    server = gateway_server()
    url = server.url.replace("http", "ws") + f"/api/v1/telephony/ws/wf-m/user-m/{RUN}"
    async with connect(url, compression=None, proxy=None) as ws:
        await ws.send(b"\x00" * 640)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd.code == 1008


async def test_an_agent_that_outpaces_the_store_is_held_back_and_nothing_is_lost(gateway_server):
    """The store stops answering mid-call and the agent sends 30 MB of transcript lines: the
    gateway stops reading the agent (its messages wait on TCP, not in the gateway's memory), on
    either WebSocket layer; once the store answers, every line is written, in order."""
    lines, text = 3000, "x" * 10_000
    sent = 0

    async def script(agent, ws):
        nonlocal sent
        for n in range(lines):
            await ws.send(json.dumps({"type": "transcript", "role": "agent", "text": f"{n} {text}", "final": True}))
            sent += 1
        async for message in ws:
            agent.messages.append(message)

    gate, written = threading.Event(), 0
    async with AgentServer(script) as agent:
        server = gateway_server(agent={"url": agent.url})
        store = server.app.state.gateway.store
        write = store.record_activity

        async def held_write(*args, **kwargs):  # the store's transcripts wait until the test opens the gate
            nonlocal written
            while kwargs.get("kind") == "transcript" and not gate.is_set():
                await asyncio.sleep(0.01)
            result = await write(*args, **kwargs)
            written += kwargs.get("kind") == "transcript"
            return result

        store.record_activity = held_write
        client = await TwilioClient.open(server)
        await eventually(lambda: sent > 0, what="the agent's first line")
        await asyncio.sleep(3)
        assert sent < lines  # held back: the gateway took no more than the writes' queue and TCP's buffers
        gate.set()
        await eventually(lambda: written == lines, timeout=90, what="every line written")
        await client.send({"event": "stop", "stop": {}})
        call = await eventually(lambda: (c := admin_call(server)) and any(t["kind"] == "media.ended" for t in c["timeline"])
                                and c, timeout=60)
    numbers = [int(t["data"]["text"].split(" ", 1)[0]) for t in call["timeline"] if t["kind"] == "transcript"]
    assert numbers == list(range(lines))
