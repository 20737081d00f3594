"""`media.transcode_batching: true` end to end: several Twilio calls at once through a real gateway
server to an external agent server; each agent receives exactly the bytes the per-call Transcoder
makes of its caller's audio (bit for bit), every frame, in order, and the DTMF digit after them."""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET

import httpx
import numpy as np
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from gateway.audio import TWILIO_FORMAT, VONAGE_FORMAT, Transcoder
from gateway.audio import batch, scheduler
from gateway.audio.scheduler import BatchScheduler
from support import TWILIO_SID, twilio_signature

CALLS = 6
FRAMES = 60


class RecordingAgent:
    """An agent server that keeps what each call sent it, by run id."""

    def __init__(self) -> None:
        self.received: dict[str, list[bytes | str]] = {}
        self.ended: dict[str, asyncio.Event] = {}

    async def handler(self, ws) -> None:
        start = json.loads(await ws.recv())
        run = start["call"]["workflow_run_id"]
        messages = self.received.setdefault(run, [])
        try:
            async for message in ws:
                messages.append(message)
                if isinstance(message, str) and json.loads(message)["type"] == "stop":
                    break
        except websockets.ConnectionClosed:
            pass
        finally:
            self.ended.setdefault(run, asyncio.Event()).set()

    async def __aenter__(self) -> RecordingAgent:
        self.server = await serve(self.handler, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/agent"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


async def twilio_call(server, run: str, frames: list[bytes]) -> None:
    """One Twilio call: answer webhook, media socket, the frames in bursts, a DTMF digit, stop."""
    call_sid = "CA" + run[-1] * 32
    params = {
        "CallSid": call_sid,
        "AccountSid": TWILIO_SID,
        "CallStatus": "in-progress",
        "From": "+15550001",
        "To": "+15550002",
        "Direction": "inbound",
    }
    url = f"{server.url}/api/v1/telephony/webhook/wf-b/user-b/{run}"
    async with httpx.AsyncClient() as client:
        response = await client.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
    assert response.status_code == 200, response.text
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    ws_url = stream.get("url")
    custom = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    sid = "MZ" + run[-1] * 32
    async with connect(
        ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(ws_url, {})}, compression=None, proxy=None
    ) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(
            json.dumps(
                {
                    "event": "start",
                    "streamSid": sid,
                    "start": {
                        "streamSid": sid,
                        "accountSid": TWILIO_SID,
                        "callSid": call_sid,
                        "tracks": ["inbound"],
                        "customParameters": custom,
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    },
                }
            )
        )
        for i, frame in enumerate(frames):
            await ws.send(
                json.dumps(
                    {
                        "event": "media",
                        "streamSid": sid,
                        "media": {
                            "track": "inbound",
                            "chunk": str(i + 1),
                            "timestamp": str(20 * i),
                            "payload": base64.b64encode(frame).decode(),
                        },
                    }
                )
            )
            if i % 10 == 9:
                await asyncio.sleep(0.01)  # bursts of 10 frames: the calls' bursts meet in the server's loop
        await ws.send(json.dumps({"event": "dtmf", "streamSid": sid, "dtmf": {"track": "inbound_track", "digit": "5"}}))
        await ws.send(json.dumps({"event": "stop", "streamSid": sid, "stop": {"callSid": call_sid}}))
        await ws.wait_closed()


async def test_calls_batched_together_give_each_agent_its_own_transcoding_bit_for_bit(
    gateway_server, monkeypatch
) -> None:
    monkeypatch.setattr(scheduler, "MIN_STREAMS", 2)  # batches of two or more: six calls make plenty
    monkeypatch.setattr(batch, "MIN_GROUP", 2)
    monkeypatch.setattr(scheduler, "SPARSE_RUNS", 0)  # and never back off
    rng = np.random.default_rng(15)
    audio = {
        f"run-batch-{i}": [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(FRAMES)]
        for i in range(CALLS)
    }
    async with RecordingAgent() as agent:
        server = gateway_server(agent={"url": agent.url}, media={"transcode_batching": True})
        before = sum(s.batches for s in list(BatchScheduler._by_loop.values()))
        await asyncio.gather(*(twilio_call(server, run, frames) for run, frames in audio.items()))
        for run in audio:
            await asyncio.wait_for(agent.ended.setdefault(run, asyncio.Event()).wait(), 10)
    for run, frames in audio.items():
        reference = Transcoder(TWILIO_FORMAT, VONAGE_FORMAT)
        expected = [reference.process(frame) for frame in frames]
        messages = agent.received[run]
        pcm = [m for m in messages if isinstance(m, bytes)]
        assert pcm == expected, run
        texts = [json.loads(m) for m in messages if isinstance(m, str)]
        assert {"type": "dtmf", "digit": "5"} in texts
        dtmf_at = messages.index(next(m for m in messages if isinstance(m, str) and '"dtmf"' in m))
        assert dtmf_at == FRAMES  # after every frame of caller audio sent before it
    assert sum(s.batches for s in list(BatchScheduler._by_loop.values())) > before  # frames did share batches
