"""Telnyx's and Plivo's media sockets against an external agent: the agent's start, its
audio in exact provider frames, its marks answered by the provider's echo, its clear."""

from __future__ import annotations

import asyncio
import base64
import json

from api.test_plivo_routes import PlivoStream
from api.test_telnyx_routes import TelnyxStream
from media.test_bridge import AgentServer, _agent_got
from support import carrier_config


async def script(agent, ws):
    await ws.send(b"\x00\x00" * 320 * 3)  # 3 frames of pcm16 16 kHz
    await ws.send(json.dumps({"type": "mark", "name": "m1"}))
    async for message in ws:
        agent.messages.append(message)
        if isinstance(message, str) and json.loads(message) == {"type": "mark", "name": "m1"}:
            await ws.send(json.dumps({"type": "clear"}))


async def receive(stream):
    return json.loads(await asyncio.wait_for(stream.ws.recv(), 5))


async def test_telnyx_frames_mark_echo_and_clear(gateway_server, tmp_path):
    async with AgentServer(script) as agent:
        server = gateway_server(providers=carrier_config(tmp_path)["providers"], agent={"url": agent.url})
        stream = await TelnyxStream.open(server)
        await stream.media(b"\xff" * 160, 1)
        seen = [await receive(stream) for _ in range(4)]
        assert [m["event"] for m in seen] == ["media", "media", "media", "mark"]
        assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for m in seen[:3])
        assert seen[3] == {"event": "mark", "mark": {"name": "m1"}}
        await stream.send({"event": "mark", "mark": {"name": "m1"}})  # Telnyx echoes it once played
        assert await receive(stream) == {"event": "clear"}
        await asyncio.wait_for(_agent_got(agent, lambda m: m == {"type": "mark", "name": "m1"}), 3)
        await stream.send({"event": "stop", "stop": {}})
        await asyncio.wait_for(agent.done.wait(), 5)
    call = agent.starts[0]["call"]
    assert call["provider"] == "telnyx" and call["stream_id"] == stream.stream_id and call["workflow_run_id"] == "run-tx"


async def test_plivo_frames_checkpoint_echo_and_clear(gateway_server, tmp_path):
    async with AgentServer(script) as agent:
        server = gateway_server(providers=carrier_config(tmp_path)["providers"], agent={"url": agent.url})
        stream = await PlivoStream.open(server)
        await stream.media(b"\xff" * 160, 1)
        seen = [await receive(stream) for _ in range(4)]
        assert [m["event"] for m in seen] == ["playAudio", "playAudio", "playAudio", "checkpoint"]
        assert seen[3] == {"event": "checkpoint", "streamId": stream.stream_id, "name": "m1"}
        await stream.send({"event": "playedStream", "name": "m1"})  # Plivo answers once the audio has played
        assert await receive(stream) == {"event": "clearAudio", "streamId": stream.stream_id}
        await asyncio.wait_for(_agent_got(agent, lambda m: m == {"type": "mark", "name": "m1"}), 3)
        await stream.ws.close()
        await asyncio.wait_for(agent.done.wait(), 5)
    call = agent.starts[0]["call"]
    assert call["provider"] == "plivo" and call["stream_id"] == stream.stream_id and call["provider_call_id"]
