"""A Twilio media stream opened on one `gateway serve` instance and a `clear` asked of another:
the request travels by NOTIFY to the instance that owns the media session."""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET
from typing import Any

import httpx

from support import API_KEY, TWILIO_SID, twilio_signature


async def assert_clear_reaches_media_owner(owner: Any, asker: Any, run_id: str, call_sid: str) -> None:
    """Open a media stream for `run_id` on `owner`, ask `asker` to clear it, and expect the
    `clear` frame on the stream (within generous timeouts)."""
    from websockets.asyncio.client import connect

    params = {"CallSid": call_sid, "AccountSid": TWILIO_SID, "CallStatus": "in-progress", "Direction": "inbound"}
    url = owner.url + f"/api/v1/telephony/webhook/wf/u/{run_id}"
    answer = httpx.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)})
    stream = ET.fromstring(answer.text).find("./Connect/Stream")
    ws_url = stream.get("url")
    custom = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    async with connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(ws_url, {})}, proxy=None) as ws:
        sid = "MZ" + call_sid[2:]
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "streamSid": sid, "start": {"streamSid": sid, "customParameters": custom}}))
        await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "media"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        for _ in range(100):  # media.started is written by the session's own writer: wait for it
            record = httpx.get(asker.url + f"/api/v1/calls/{run_id}", headers=headers).json()
            if record["media"].get("instance"):
                break
            await asyncio.sleep(0.1)
        response = httpx.post(asker.url + f"/api/v1/calls/{run_id}/clear", headers=headers)
        assert response.status_code == 202 and response.json()["instance"] == record["media"]["instance"]
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"event": "clear", "streamSid": sid}
