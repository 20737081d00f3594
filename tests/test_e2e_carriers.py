"""Telnyx and Plivo end to end through a real `gateway serve`: signed answer -> stream URL, a
WebSocket client speaking the provider's documented media messages, the built-in echo agent
answering in exact frames, signed status callbacks -> call.ended delivered to a real receiver;
and `gateway simulate --provider ...` against the same process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time

import httpx

from api.test_telnyx_routes import RUN, SID, STATUS, TelnyxStream, params, post
from support import TELNYX_SEED, Receiver, carrier_config, wait_until


def hooks(receiver):
    return [{"name": "crm", "events": ["call.*"], "url": receiver.url + "/x", "allow_networks": ["127.0.0.0/8"]}]


def delivered(receiver, run_id):
    return [json.loads(r["body"]) for r in receiver.requests if r["body"] and json.loads(r["body"]).get("workflow_run_id") == run_id]


def event_types(receiver, run_id):
    return [body.get("type") or body.get("event") for body in delivered(receiver, run_id)]


async def telnyx_call(proc):
    stream = await TelnyxStream.open(proc)
    frames = [bytes([(i * 7 + j) % 256 for j in range(160)]) for i in range(50)]
    received: list[bytes] = []

    async def reader():
        while len(received) < 45:
            message = json.loads(await asyncio.wait_for(stream.ws.recv(), 5))
            if message["event"] == "media":
                received.append(base64.b64decode(message["media"]["payload"]))

    task = asyncio.create_task(reader())
    start = time.monotonic()
    for i, frame in enumerate(frames):
        await stream.media(frame, i + 1)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
    await asyncio.wait_for(task, 10)
    await stream.send({"event": "stop", "stop": {"call_control_id": SID}})
    await stream.ws.wait_closed()
    return received


def test_telnyx_call_through_a_real_gateway_serve(gateway_process, tmp_path):
    with Receiver() as receiver:
        proc = gateway_process(carrier_config(tmp_path, webhooks=hooks(receiver)))
        received = asyncio.run(telnyx_call(proc))
        assert len(received) >= 45 and all(len(frame) == 160 for frame in received)
        assert post(proc, STATUS, params("completed", CallDuration="2")).status_code == 204
        wait_until(lambda: "call.ended" in event_types(receiver, RUN), 15, "call.ended delivered")
        types = event_types(receiver, RUN)
        assert types.count("call.ended") == 1 and "call.started" in types and "call.completed" in types
        call = httpx.get(f"{proc.url}/api/v1/calls/{RUN}", headers={"Authorization": "Bearer test-admin-api-key"}).json()
        ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
        assert ended["frames_in"] == 50 and ended["misframed"] == 0 and ended["bad_messages"] == 0


def test_gateway_simulate_telnyx(gateway_process, tmp_path):
    with Receiver() as receiver:
        proc = gateway_process(carrier_config(tmp_path, webhooks=hooks(receiver)))
        env = {**os.environ, "GATEWAY_SIMULATE_TELNYX_KEY": base64.b64encode(TELNYX_SEED).decode()}
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--provider", "telnyx", "--seconds", "1",
                                 "--config", str(proc.config_path), "--url", proc.url], capture_output=True, text=True,
                                timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "state=completed" in out and "sent 50 frames" in out and "media.ended" in out and "call.ended" in out
        assert int(out.split("the agent sent back ")[1].split(" frames")[0]) >= 45
        missing = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--provider", "telnyx",
                                  "--config", str(proc.config_path), "--url", proc.url], capture_output=True, text=True,
                                 timeout=60, env={k: v for k, v in env.items() if k != "GATEWAY_SIMULATE_TELNYX_KEY"})
        assert missing.returncode == 1 and "GATEWAY_SIMULATE_TELNYX_KEY" in missing.stderr


async def plivo_call(proc):
    from api.test_plivo_routes import PlivoStream

    stream = await PlivoStream.open(proc)
    received: list[bytes] = []

    async def reader():
        while len(received) < 45:
            message = json.loads(await asyncio.wait_for(stream.ws.recv(), 5))
            if message["event"] == "playAudio":
                received.append(base64.b64decode(message["media"]["payload"]))

    task = asyncio.create_task(reader())
    start = time.monotonic()
    for i in range(50):
        await stream.media(bytes([(i * 5 + j) % 256 for j in range(160)]), i + 1)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
    await asyncio.wait_for(task, 10)
    await stream.ws.close()
    return received


def test_plivo_call_through_a_real_gateway_serve(gateway_process, tmp_path):
    from api.test_plivo_routes import RUN as PLIVO_RUN, STATUS as PLIVO_STATUS, params as plivo_params, post as plivo_post

    with Receiver() as receiver:
        proc = gateway_process(carrier_config(tmp_path, webhooks=hooks(receiver)))
        received = asyncio.run(plivo_call(proc))
        assert len(received) >= 45 and all(len(frame) == 160 for frame in received)
        done = plivo_post(proc, PLIVO_STATUS, plivo_params("completed", Event="Hangup", Duration="2"))
        assert done.status_code == 204
        wait_until(lambda: "call.ended" in event_types(receiver, PLIVO_RUN), 15, "call.ended delivered")
        types = event_types(receiver, PLIVO_RUN)
        assert types.count("call.ended") == 1 and "call.started" in types and "call.completed" in types


def test_gateway_simulate_plivo(gateway_process, tmp_path):
    with Receiver() as receiver:
        proc = gateway_process(carrier_config(tmp_path, webhooks=hooks(receiver)))
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--provider", "plivo", "--seconds", "1",
                                 "--config", str(proc.config_path), "--url", proc.url], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "state=completed" in out and "sent 50 frames" in out and "media.ended" in out and "call.ended" in out
        assert int(out.split("the agent sent back ")[1].split(" frames")[0]) >= 45
