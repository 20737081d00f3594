"""Media end to end through a real `gateway serve` process (media sockets on the lean layer, its
default): every provider, with the built-in echo agent and with an external agent; and every
provider once on the fallback (`listen.media_websocket: uvicorn`)."""

from __future__ import annotations

import asyncio
import audioop
import base64
import json

import numpy as np
import pytest
from websockets.asyncio.client import connect

from support import carrier_config, eventually
from api import test_plivo_routes, test_telnyx_routes
from api.test_plivo_routes import PlivoStream
from api.test_telnyx_routes import TelnyxStream
from media.test_bridge import RUN, AgentServer, TwilioClient, admin_call, best_correlation, speech_like, vonage_endpoint

FRAMES = 50


RUNS = {"twilio": RUN, "vonage": RUN, "telnyx": test_telnyx_routes.RUN, "plivo": test_plivo_routes.RUN}


def _ended(proc, run_id: str) -> dict | None:
    call = admin_call(proc, run_id)
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


async def _carrier_call(proc, stream_class) -> None:
    """A Telnyx or Plivo call (JSON text frames of base64 mu-law): its audio echoed in exact frames."""
    stream = await stream_class.open(proc)
    signal = speech_like(FRAMES * 0.02)
    mulaw = audioop.lin2ulaw(signal.tobytes(), 2)
    received = bytearray()

    async def reader() -> None:
        while len(received) < FRAMES * 160:
            message = json.loads(await asyncio.wait_for(stream.ws.recv(), 10))
            if message["event"] in ("media", "playAudio"):  # Telnyx's, Plivo's
                payload = base64.b64decode(message["media"]["payload"])
                assert len(payload) == 160
                received.extend(payload)

    task = asyncio.create_task(reader())
    for i in range(FRAMES):
        await stream.media(mulaw[i * 160:(i + 1) * 160], i + 1)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(task, 15)
    echoed = np.frombuffer(audioop.ulaw2lin(bytes(received), 2), dtype=np.int16)
    assert best_correlation(signal, echoed) > 0.95
    if stream_class is TelnyxStream:
        await stream.send({"event": "stop", "stop": {}})
        await asyncio.wait_for(stream.ws.wait_closed(), 10)
        assert stream.ws.close_code == 1000
    else:  # Plivo ends a stream by closing its socket
        await stream.ws.close()


CALLS = {
    "twilio": _twilio_call,
    "vonage": _vonage_call,
    "telnyx": lambda proc: _carrier_call(proc, TelnyxStream),
    "plivo": lambda proc: _carrier_call(proc, PlivoStream),
}


@pytest.mark.parametrize("provider", ["twilio", "vonage", "telnyx", "plivo"])
@pytest.mark.parametrize("agent_kind", ["echo", "external"])
async def test_calls_through_gateway_serve_on_the_lean_layer(gateway_process, tmp_path, provider, agent_kind):
    async with AgentServer() as external:
        agent = {"url": "echo"} if agent_kind == "echo" else {"url": external.url}
        proc = gateway_process(carrier_config(tmp_path, agent=agent))
        await CALLS[provider](proc)
        ended = await eventually(lambda: _ended(proc, RUNS[provider]), timeout=15, what="media.ended")
        assert ended["frames_in"] == FRAMES and ended["inbound_dropped"] == 0 and ended["bad_messages"] == 0
        assert ended["frames_out"] >= FRAMES
        if agent_kind == "external":
            assert len(external.starts) == 1 and external.starts[0]["call"]["provider"] == provider
    log = proc.log()
    assert "Traceback" not in log and "ERROR" not in log
    assert f"provider={provider}" in log and "socket=picows" in log  # served by the lean layer


@pytest.mark.parametrize("provider", ["twilio", "vonage", "telnyx", "plivo"])
async def test_calls_through_gateway_serve_on_the_fallback(gateway_process, tmp_path, provider):
    proc = gateway_process(carrier_config(tmp_path, agent={"url": "echo"}, listen={"media_websocket": "uvicorn"}))
    await CALLS[provider](proc)
    ended = await eventually(lambda: _ended(proc, RUNS[provider]), timeout=15, what="media.ended")
    assert ended["frames_in"] == FRAMES and ended["inbound_dropped"] == 0 and ended["bad_messages"] == 0
    log = proc.log()
    assert "Traceback" not in log and "ERROR" not in log
    assert f"provider={provider}" in log and "socket=asgi" in log  # served by uvicorn and Starlette
