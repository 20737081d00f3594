"""`agent.protocol: twilio`: the pure translation (`TwilioAgentProtocol`), and calls of both
providers reaching bots that speak Twilio Media Streams: a bot built on Pipecat's own Twilio
transport detection and `TwilioFrameSerializer`, and a scripted Twilio-speaking test agent for
marks, clear and DTMF."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import uvicorn
from hypothesis import given, settings
from pipecat.frames.frames import InputAudioRawFrame, InputDTMFFrame, OutputAudioRawFrame
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect

from gateway.media.twilio_agent import AgentMessageError, TwilioAgentProtocol, custom_parameters
from media.test_bridge import RUN, WEBHOOK, AgentServer, TwilioClient, admin_call, best_correlation, speech_like
from support import eventually, vonage_jwt

SID = "MZ" + "a" * 32
START = {"type": "start", "call": {"workflow_run_id": "run-1", "workflow_id": "wf", "user_id": "u", "provider": "vonage",
                                   "provider_call_id": "v-uuid", "stream_id": "s", "from": "+1555", "to": "+1666",
                                   "direction": "inbound"},
         "initial_context": {"tier": "gold", "n": 1}, "audio": {"encoding": "mulaw", "sample_rate": 8000, "frame_ms": 20}}


# -- the translation, without sockets -------------------------------------------------------
def test_opening_is_connected_then_start_as_twilio_sends_them():
    protocol = TwilioAgentProtocol(stream_sid=SID, call_sid="v-uuid", account_sid="AC" + "1" * 32)
    connected, start = map(json.loads, protocol.opening(START))
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start == {"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
        "accountSid": "AC" + "1" * 32, "streamSid": SID, "callSid": "v-uuid", "tracks": ["inbound"],
        "customParameters": {"workflow_run_id": "run-1", "workflow_id": "wf", "user_id": "u", "provider": "vonage",
                             "provider_call_id": "v-uuid", "from": "+1555", "to": "+1666", "direction": "inbound",
                             "initial_context": '{"tier":"gold","n":1}'},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def test_media_dtmf_mark_stop_carry_sequence_chunk_and_timestamp():
    protocol = TwilioAgentProtocol(stream_sid=SID, call_sid="c")
    protocol.opening(START)
    first, second = json.loads(protocol.media(b"\xff" * 160)), json.loads(protocol.media(b"\x7f" * 160))
    assert first == {"event": "media", "sequenceNumber": "2", "streamSid": SID,
                     "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": base64.b64encode(b"\xff" * 160).decode()}}
    assert (second["sequenceNumber"], second["media"]["chunk"], second["media"]["timestamp"]) == ("3", "2", "20")
    assert json.loads(protocol.control({"type": "dtmf", "digit": "5"}))["dtmf"] == {"track": "inbound_track", "digit": "5"}
    assert json.loads(protocol.control({"type": "mark", "name": "m", "cleared": True}))["mark"] == {"name": "m"}
    stop = json.loads(protocol.control({"type": "stop", "reason": "bye"}))
    assert stop["stop"] == {"accountSid": "AC" + "0" * 32, "callSid": "c"} and stop["sequenceNumber"] == "6"
    assert protocol.control({"type": "something-else"}) is None


def test_bot_messages_become_audio_and_native_controls():
    protocol = TwilioAgentProtocol(stream_sid=SID, call_sid="c")
    audio = bytes(range(256)) * 3
    assert protocol.parse(json.dumps({"event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(audio).decode()}})) == audio
    assert protocol.parse(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "done"}})) == {"type": "mark", "name": "done"}
    assert protocol.parse(json.dumps({"event": "clear", "streamSid": SID})) == {"type": "clear"}


@pytest.mark.parametrize(("message", "reason"), [
    (b"\x00\x01", "binary frames"),
    ("not json", "not valid JSON"),
    ("[1]", "object with an event"),
    (json.dumps({"event": "hangup", "streamSid": SID}), "unknown event 'hangup'"),
    (json.dumps({"event": "media", "streamSid": "MZother", "media": {"payload": ""}}), "not this stream's"),
    (json.dumps({"event": "media", "streamSid": SID, "media": {}}), "media.payload"),
    (json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "@@@"}}), "not base64"),
    (json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": ""}}), "mark.name"),
    ("[" * 5000, "not valid JSON"),
])
def test_bad_bot_messages_say_what_was_wrong(message, reason):
    with pytest.raises(AgentMessageError, match=reason):
        TwilioAgentProtocol(stream_sid=SID, call_sid="c").parse(message)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.binary(max_size=64), st.text(max_size=200),
                 st.dictionaries(st.sampled_from(["event", "streamSid", "media", "mark"]),
                                 st.one_of(st.none(), st.text(max_size=10), st.sampled_from(["media", "mark", "clear", SID]),
                                           st.dictionaries(st.sampled_from(["payload", "name"]), st.text(max_size=20))),
                                 max_size=4).map(json.dumps)))
def test_parse_refuses_only_with_its_own_error(message):
    try:
        TwilioAgentProtocol(stream_sid=SID, call_sid="c").parse(message)
    except AgentMessageError:
        pass


def test_custom_parameters_are_all_text():
    assert all(isinstance(v, str) for v in custom_parameters({"call": {"from": None}, "initial_context": {}}).values())


# -- through the gateway --------------------------------------------------------------------
class PipecatBot:
    """A bot as Pipecat's Twilio examples build one: Pipecat's `parse_telephony_websocket` tells the
    transport and the call from the first messages, `TwilioFrameSerializer` turns Twilio messages
    into frames at the pipeline's 16 kHz and back. It echoes the caller's audio."""

    def __init__(self) -> None:
        self.detected: list = []
        self.media_in = 0  # Twilio media messages (Pipecat's resampler hands frames on in batches)
        self.dtmf: list[str] = []
        app = Starlette(routes=[WebSocketRoute("/bot", self.handler)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))

    async def handler(self, websocket) -> None:
        await websocket.accept()
        transport, call = await parse_telephony_websocket(websocket)
        self.detected.append((transport, call))
        serializer = TwilioFrameSerializer(call.stream_id, call_sid=call.call_id,
                                           params=TwilioFrameSerializer.InputParams(auto_hang_up=False))
        await serializer.setup(SimpleNamespace(audio_in_sample_rate=16000))  # the pipeline's input rate
        try:
            async for text in websocket.iter_text():
                self.media_in += '"event":"media"' in text
                frame = await serializer.deserialize(text)
                if isinstance(frame, InputAudioRawFrame):
                    out = await serializer.serialize(OutputAudioRawFrame(audio=frame.audio, sample_rate=16000, num_channels=1))
                    if out:
                        await websocket.send_text(out)
                elif isinstance(frame, InputDTMFFrame):
                    self.dtmf.append(frame.button.value)
        except WebSocketDisconnect:  # the gateway closed the socket at the end of the call
            pass

    async def __aenter__(self) -> "PipecatBot":
        self.task = asyncio.ensure_future(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/bot"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task


async def test_a_vonage_call_reaches_a_pipecat_twilio_bot_and_back_in_exact_frames(gateway_server):
    async with PipecatBot() as bot:
        server = gateway_server(agent={"url": bot.url, "protocol": "twilio"})
        async with httpx.AsyncClient() as http:
            answer = await http.get(server.url + WEBHOOK, params={"uuid": "aaaaaaaa-0000-0000-0000-000000000009",
                                                                  "to": "+15550002", "from": "+15550001"},
                                    headers={"Authorization": f"Bearer {vonage_jwt(b'')}"})
        endpoint = answer.json()[0]["endpoint"][0]
        async with connect(endpoint["uri"], compression=None, proxy=None) as ws:
            await ws.send(json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"],
                                      **endpoint["headers"]}))
            signal = speech_like(2.0, rate=16000)
            pcm = signal.tobytes()
            got = bytearray()

            async def caller() -> None:
                start = time.monotonic()
                for i in range(100):
                    await ws.send(pcm[i * 640:(i + 1) * 640])
                    await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
                await ws.send(json.dumps({"event": "websocket:dtmf", "digit": "4", "duration": 200}))

            sending = asyncio.ensure_future(caller())
            while len(got) < 80 * 640:
                frame = await asyncio.wait_for(ws.recv(), 5)
                assert isinstance(frame, bytes) and len(frame) == 640  # Vonage's exact 20 ms frames
                got += frame
            await sending
            await eventually(lambda: bot.dtmf == ["4"])
        echoed = np.frombuffer(bytes(got), dtype=np.int16)
        # through mu-law twice and two resamplers: the caller's speech comes back
        assert best_correlation(signal, echoed) > 0.9
    (transport, call), = bot.detected
    assert transport == "twilio"  # Pipecat recognized the gateway as Twilio
    assert call.stream_id.startswith("MZ") and call.call_id == "aaaaaaaa-0000-0000-0000-000000000009"
    assert call.body["workflow_run_id"] == RUN and call.body["provider"] == "vonage" and call.body["from"] == "+15550001"
    assert bot.media_in >= 90  # one per 20 ms the caller spoke


async def test_marks_clear_and_odd_lengths_with_a_twilio_speaking_agent(gateway_server):
    async def script(agent, ws):
        start = json.loads(await ws.recv())  # after `connected`, which AgentServer read as the "start"
        agent.twilio_start = start
        sid = start["streamSid"]
        odd = base64.b64encode(b"\x00" * 1000).decode()  # 125 ms: not a whole number of 20 ms frames
        await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": odd}}))
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "m1"}}))
        await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(b"\x00" * 16000).decode()}}))
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "m2"}}))
        await ws.send(json.dumps({"event": "hangup", "streamSid": sid}))  # not Twilio: counted, the call goes on
        async for message in ws:
            agent.messages.append(message)
            event = json.loads(message)
            if event.get("event") == "mark" and event["mark"]["name"] == "m1":
                await ws.send(json.dumps({"event": "clear", "streamSid": sid}))

    async with AgentServer(script) as agent:
        server = gateway_server(agent={"url": agent.url, "protocol": "twilio"})
        client = await TwilioClient.open(server)
        await client.media(b"\xff" * 160)
        await client.send({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "9"}})
        frames = 0
        while True:  # the gateway plays to the Twilio caller: 7 frames (1000 bytes, padded), then the mark
            message = await client.receive_json()
            if message["event"] == "media":
                assert len(base64.b64decode(message["media"]["payload"])) == 160
                frames += 1
            elif message["event"] == "mark":
                assert message["mark"]["name"] == "m1"
                await client.send({"event": "mark", "mark": {"name": "m1"}})  # played
                break
        assert frames == 7
        await asyncio.wait_for(_events(agent, lambda e: e.get("event") == "mark" and e["mark"]["name"] == "m2"), 5)
        await client.send({"event": "stop", "stop": {}})
        await asyncio.wait_for(agent.done.wait(), 5)
    events = [json.loads(m) for m in agent.messages]
    kinds = [e["event"] for e in events]
    assert agent.starts[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert agent.twilio_start["start"]["customParameters"]["provider"] == "twilio"
    assert agent.twilio_start["start"]["callSid"] == "CA" + "7" * 32  # a Twilio call keeps its own sids
    assert {"track": "inbound_track", "digit": "9"} in [e["dtmf"] for e in events if e["event"] == "dtmf"]
    assert [e["mark"]["name"] for e in events if e["event"] == "mark"] == ["m1", "m2"]  # m2 came back on clear
    assert kinds[-1] == "stop" and kinds.count("media") >= 1
    sequence = [int(e["sequenceNumber"]) for e in events]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)
    timeline = admin_call(server)["timeline"]
    ended = next(t for t in timeline if t["kind"] == "media.ended")["data"]
    assert ended["agent_bad_messages"] == 1  # the `hangup` event Twilio does not have


async def _events(agent, predicate):
    while not any(predicate(json.loads(m)) for m in agent.messages if isinstance(m, str)):
        await asyncio.sleep(0.02)
