"""One media session per call, and a finished call stays finished: real gateway servers (SQLite
and PostgreSQL), real WebSocket clients speaking Twilio's Media Streams messages."""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from support import TWILIO_SID, eventually, twilio_signature, twilio_status_callback
from media.test_bridge import RUN, TwilioClient, admin_call, twilio_answer

CALL_SID = "CA" + "7" * 32
FRAME = audioop.lin2ulaw(np.zeros(160, dtype=np.int16).tobytes(), 2)


async def open_stream(ws_url: str, params: dict[str, str], *, stream_sid: str = "MZ" + "1" * 32) -> TwilioClient:
    """A media socket opened with the given answer parameters (a replay uses old ones)."""
    ws = await connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(ws_url, {})}, compression=None, proxy=None)
    client = TwilioClient(ws, stream_sid)
    await client.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    await client.send({"event": "start", "start": {
        "streamSid": stream_sid, "accountSid": TWILIO_SID, "callSid": CALL_SID, "tracks": ["inbound"],
        "customParameters": params, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
    return client


async def closed_code(client: TwilioClient, timeout: float = 10) -> int | None:
    """The close code the gateway sent (reading whatever arrives before it)."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in client.ws:
                pass
    except ConnectionClosed:
        pass
    return client.ws.close_code


def kinds(call) -> list[str]:
    return [t["kind"] for t in call["timeline"]]


async def event_types(server) -> list[str]:
    """The call's events, read through a store of this loop (the server's lives on its own)."""
    from gateway.store import open_store_for

    store = open_store_for(server.app.state.gateway.config.store)
    await store.open()
    try:
        return [e.type for e in await store.list_events(run_id=RUN)]
    finally:
        await store.close()


async def test_a_token_replayed_after_the_call_ended_opens_nothing(gateway_server, store_config, tmp_path):
    server = gateway_server(recording=True, **store_config)
    ws_url, params = await twilio_answer(server)
    await asyncio.to_thread(twilio_status_callback, server, RUN, "completed", sid=CALL_SID, CallDuration="3")
    before = admin_call(server)
    assert before["state"] == "completed"
    for _ in range(2):  # the report: two sockets replayed the token after `completed`
        client = await open_stream(ws_url, params)
        with pytest.raises(ConnectionClosed):  # closed before any audio is read
            for _ in range(50):
                await client.media(FRAME)
                await asyncio.sleep(0.01)
        assert client.ws.close_code == 1008 and "ended" in client.ws.close_reason
    after = admin_call(server)
    assert kinds(after) == kinds(before) and after["media"] == before["media"] == {}
    types = await event_types(server)
    assert "call.started" not in types and types[-1] == "call.ended"
    assert not list(Path(tmp_path).glob("recordings/*")), "a recording for a call that never had media"


@pytest.mark.parametrize("path_change", ["workflow_id", "user_id"])
async def test_a_token_opens_only_the_path_it_was_minted_for(gateway_server, path_change):
    server = gateway_server()
    ws_url, params = await twilio_answer(server)
    other = ws_url.replace("/wf-m/user-m/", "/wf-other/user-m/" if path_change == "workflow_id" else "/wf-m/user-other/")
    client = await open_stream(other, params)
    assert await closed_code(client) == 1008
    assert client.ws.close_reason == "stream token does not match this call"
    assert "media.connected" not in kinds(admin_call(server))


async def test_a_reconnect_replaces_the_live_session_and_the_call_starts_once(gateway_server, store_config):
    server = gateway_server(**store_config)
    ws_url, params = await twilio_answer(server)
    first = await open_stream(ws_url, params, stream_sid="MZ" + "a" * 32)
    for _ in range(5):
        await first.media(FRAME)
    await eventually(lambda: "media.started" in kinds(admin_call(server)))
    second = await open_stream(ws_url, params, stream_sid="MZ" + "b" * 32)  # same token, concurrently
    assert await closed_code(first) == 1000  # the old session ends: replaced
    for _ in range(5):
        await second.media(FRAME)
    echoed = json.loads(await asyncio.wait_for(second.ws.recv(), 5))  # the new one carries the call
    assert echoed["event"] == "media" and echoed["streamSid"] == "MZ" + "b" * 32
    await second.send({"event": "stop", "stop": {"accountSid": TWILIO_SID, "callSid": CALL_SID}})
    await second.ws.wait_closed()
    call = await eventually(lambda: (c := admin_call(server)) and c["media"].get("ended") and c)
    connected = [t["data"] for t in call["timeline"] if t["kind"] == "media.connected"]
    assert len(connected) == 2 and connected[0]["replaces"] is None
    assert connected[1]["replaces"] and connected[1]["replaces"] != call["media"]["session"]  # the first, replaced
    assert call["media"]["stream_id"] == "MZ" + "b" * 32
    ended = [t["data"] for t in call["timeline"] if t["kind"] == "media.ended"]
    assert len(ended) == 1 and ended[0]["frames_in"] == 5  # the replaced session's end changes nothing
    assert (await event_types(server)).count("call.started") == 1


async def test_the_live_session_ends_with_the_call_and_nothing_changes_after(gateway_server, store_config):
    server = gateway_server(**store_config)
    client = await TwilioClient.open(server)
    for _ in range(3):
        await client.media(FRAME)
    await eventually(lambda: "media.started" in kinds(admin_call(server)))
    await asyncio.to_thread(twilio_status_callback, server, RUN, "completed", sid=CALL_SID, CallDuration="3")
    with contextlib.suppress(ConnectionClosed):  # whatever the socket still sends changes nothing
        await client.send({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}})
        for _ in range(7):
            await client.media(FRAME)
    assert await closed_code(client) == 1000  # the gateway ended the session: the call is over
    call = await eventually(lambda: (c := admin_call(server)) and c["media"].get("ended") and c)
    after_end = kinds(call)[kinds(call).index("status") + 1:]
    assert after_end == ["media.ended"]  # the live session's own end, once; no dtmf entry
    ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
    assert ended["reason"] == "call ended" and call["media"]["frames_in"] == ended["frames_in"]
    types = await event_types(server)
    assert types[-1] == "call.ended" and types.count("call.started") == 1


async def test_a_replayed_vonage_upgrade_jwt_is_refused_by_another_instance(gateway_server, store_config):
    """A signed media upgrade's `jti` is claimed in the store like a callback's."""
    from support import vonage_jwt

    first = gateway_server(**store_config)
    second = gateway_server(**store_config)
    async with httpx.AsyncClient() as http:
        answer = await http.get(first.url + f"/api/v1/telephony/webhook/wf-m/user-m/{RUN}",
                                params={"uuid": "aaaaaaaa-0000-0000-0000-000000000002", "to": "1", "from": "2"},
                                headers={"Authorization": f"Bearer {vonage_jwt(b'')}"})
    endpoint = answer.json()[0]["endpoint"][0]
    upgrade = {"Authorization": f"Bearer {vonage_jwt(b'')}"}  # the NCCO asked for signed upgrades
    async with connect(endpoint["uri"], additional_headers=upgrade, compression=None, proxy=None) as ws:
        await ws.send(json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"], **endpoint["headers"]}))
        await ws.send(bytes(640))
        await eventually(lambda: "media.connected" in kinds(admin_call(first)))
    replayed_uri = endpoint["uri"].replace(first.url.replace("http", "ws"), second.url.replace("http", "ws"))
    with pytest.raises(InvalidStatus) as refused:  # refused before the upgrade is accepted
        await connect(replayed_uri, additional_headers=upgrade, compression=None, proxy=None)
    assert refused.value.response.status_code == 403
    assert kinds(admin_call(first)).count("media.connected") == 1


@pytest.mark.postgresql
async def test_a_reconnect_to_another_instance_ends_the_session_on_the_first(gateway_server):
    from postgres_support import postgres_schema_url

    async with postgres_schema_url() as url:
        first = gateway_server(store=url)
        second = gateway_server(store=url)
        ws_url, params = await twilio_answer(first)
        old = await open_stream(ws_url, params, stream_sid="MZ" + "a" * 32)
        for _ in range(3):
            await old.media(FRAME)
        await eventually(lambda: "media.started" in kinds(admin_call(first)))
        new = await open_stream(ws_url.replace(f":{first.port}/", f":{second.port}/"), params, stream_sid="MZ" + "b" * 32)
        assert await closed_code(old) == 1000  # told through the store (NOTIFY): replaced
        await new.media(FRAME)
        assert json.loads(await asyncio.wait_for(new.ws.recv(), 5))["streamSid"] == "MZ" + "b" * 32
        await new.send({"event": "stop", "stop": {"accountSid": TWILIO_SID, "callSid": CALL_SID}})
        await new.ws.wait_closed()
        call = await eventually(lambda: (c := admin_call(second)) and c["media"].get("ended") and c)
        assert call["media"]["stream_id"] == "MZ" + "b" * 32 and call["media"]["frames_in"] == 1
        assert kinds(call).count("media.ended") == 1 and (await event_types(first)).count("call.started") == 1
        for server in (first, second):
            server.__exit__(None, None, None)
