"""Media end to end through a real `gateway serve` process (media sockets on the lean layer, its
default): both providers, with the built-in echo agent and with an external agent."""

from __future__ import annotations

import asyncio
import audioop
import base64
import json

import numpy as np
import pytest
from websockets.asyncio.client import connect

from support import base_config, eventually
from media.test_bridge import AgentServer, TwilioClient, admin_call, best_correlation, speech_like, vonage_endpoint

FRAMES = 50


def _ended(proc) -> dict | None:
    call = admin_call(proc)
    return next((t["data"] for t in call.get("timeline", ()) if t["kind"] == "media.ended"), None)


async def _twilio_call(proc) -> None:
    client = await TwilioClient.open(proc)
    signal = speech_like(FRAMES * 0.02)
    mulaw = audioop.lin2ulaw(signal.tobytes(), 2)
    received = bytearray()

    async def reader() -> None:
        while len(received) < FRAMES * 160:
            message = await client.receive_json(10)
            if message["event"] == "media":
                received.extend(base64.b64decode(message["media"]["payload"]))

    task = asyncio.create_task(reader())
    for i in range(FRAMES):
        await client.media(mulaw[i * 160:(i + 1) * 160])
        await asyncio.sleep(0.02)
    await asyncio.wait_for(task, 15)
    echoed = np.frombuffer(audioop.ulaw2lin(bytes(received), 2), dtype=np.int16)
    assert best_correlation(signal, echoed) > 0.95
    await client.send({"event": "stop", "stop": {}})
    await asyncio.wait_for(client.ws.wait_closed(), 10)
    assert client.ws.close_code == 1000


async def _vonage_call(proc) -> None:
    endpoint = await vonage_endpoint(proc)
    async with connect(endpoint["uri"], compression=None, proxy=None) as ws:
        await ws.send(json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"], **endpoint["headers"]}))
        signal = speech_like(FRAMES * 0.02, rate=16000)
        pcm = signal.tobytes()
        got = bytearray()
        for i in range(FRAMES):
            await ws.send(pcm[i * 640:(i + 1) * 640])
            await asyncio.sleep(0.02)
        while len(got) < FRAMES * 640:
            frame = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(frame, bytes) and len(frame) == 640
            got += frame
        assert best_correlation(signal, np.frombuffer(bytes(got), dtype=np.int16)) > 0.99
        await ws.send(json.dumps({"event": "websocket:dtmf", "digit": "5", "duration": 260}))
        await eventually(lambda: any(t["kind"] == "dtmf" for t in admin_call(proc)["timeline"]))


@pytest.mark.parametrize("provider", ["twilio", "vonage"])
@pytest.mark.parametrize("agent_kind", ["echo", "external"])
async def test_calls_through_gateway_serve_on_the_lean_layer(gateway_process, tmp_path, provider, agent_kind):
    async with AgentServer() as external:
        agent = {"url": "echo"} if agent_kind == "echo" else {"url": external.url}
        proc = gateway_process(base_config(tmp_path, agent=agent))
        await (_twilio_call(proc) if provider == "twilio" else _vonage_call(proc))
        ended = await eventually(lambda: _ended(proc), timeout=15, what="media.ended")
        assert ended["frames_in"] == FRAMES and ended["inbound_dropped"] == 0 and ended["bad_messages"] == 0
        assert ended["frames_out"] >= FRAMES
        if agent_kind == "external":
            assert len(external.starts) == 1 and external.starts[0]["call"]["provider"] == provider
    log = proc.log()
    assert "Traceback" not in log and "ERROR" not in log
    assert f"provider={provider}" in log and "socket=picows" in log  # served by the lean layer
