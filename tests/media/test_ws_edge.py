"""The lean WebSocket layer of media sockets (gateway/media/ws_edge.py) at the frame level:
real gateway servers served as `gateway serve` serves them, a real client (the `websockets`
package) for fragmentation, ping/pong and close handshakes, raw sockets for malformed frames."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import urllib.parse

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from support import TWILIO_SID, eventually, twilio_signature
from media.test_bridge import TwilioClient, admin_call, twilio_answer

STOP = {"event": "stop", "stop": {"accountSid": TWILIO_SID, "callSid": "CA" + "7" * 32}}
SILENCE = b"\xff" * 160
LEAN = {"media_websocket": "picows"}  # what this file tests, whatever GATEWAY_TEST_MEDIA_WEBSOCKET says


# -- a raw client: frames written byte by byte -----------------------------------------------


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, length: int | None = None) -> bytes:
    """One WebSocket frame as a client writes it (masked unless told otherwise)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    data = np.frombuffer(payload, dtype=np.uint8) ^ np.resize(np.frombuffer(key, dtype=np.uint8), len(payload))
    return head + key + data.tobytes()


class RawSocket:
    """A media socket opened by hand (a valid, signed upgrade), for frames no library would send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server) -> "RawSocket":
        ws_url, _ = await twilio_answer(server)
        parts = urllib.parse.urlsplit(ws_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"X-Twilio-Signature: {twilio_signature(ws_url, {})}\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def close_code(self) -> int | None:
        """The code of the close frame the server sends, reading to the end of the connection."""
        data = await asyncio.wait_for(self.reader.read(), 15)  # to EOF: the server drops the connection
        self.writer.close()
        while len(data) >= 2:
            opcode, n, at = data[0] & 0x0F, data[1] & 0x7F, 2
            if n == 126:
                n, at = int.from_bytes(data[2:4], "big"), 4
            elif n == 127:
                n, at = int.from_bytes(data[2:10], "big"), 10
            if opcode == 0x8:
                return int.from_bytes(data[at:at + 2], "big")
            data = data[at + n:]
        return None


@pytest.mark.parametrize("frames, code", [
    ([frame(0x1, b'{"event":"connected"}', mask=False)], 1002),  # a client's frame must be masked
    ([frame(0x3, b"x")], 1002),  # a reserved opcode
    ([frame(0x0, b"x")], 1002),  # a continuation with nothing to continue
    ([frame(0x1, b'{"ev', fin=False), frame(0x1, b'ent"}')], 1002),  # a new message inside a fragmented one
    ([frame(0x1, b'{"event":"\xff\xfe"}')], 1007),  # text that is not UTF-8
    ([frame(0x1, b'{"a":"\xc3', fin=False), frame(0x0, b'"}')], 1007),  # a fragmented one, split mid character
    ([frame(0x9, b"p" * 126)], 1002),  # a control frame over 125 bytes
    ([frame(0x2, b"", length=(1 << 20) + 1)], 1009),  # a frame over the message limit (its header is enough)
    ([frame(0x2, b"\0" * (600 * 1024), fin=False), frame(0x0, b"\0" * (600 * 1024))], 1009),  # fragments over it
])
async def test_malformed_frames_close_the_socket_with_the_code_that_names_them(gateway_server, caplog, frames, code):
    server = gateway_server(listen=LEAN)
    sock = await RawSocket.open(server)
    for data in frames:
        sock.writer.write(data)
    await sock.writer.drain()
    assert await sock.close_code() == code
    ctx = server.app.state.gateway
    await eventually(lambda: ctx.unverified_sockets == 0, what="the socket's place freed")
    lines = [r for r in caplog.records if r.name.startswith("gateway.media") and r.levelno >= logging.WARNING]
    assert len(lines) == 1 and f"before start ({code}: " in lines[0].getMessage()  # one line, saying what was wrong
    assert lines[0].levelno == logging.WARNING and not lines[0].exc_info
    again = await TwilioClient.open(server)  # the gateway goes on
    await again.media(SILENCE)
    assert (await again.receive_json())["event"] == "media"
    await again.ws.close()


async def test_fragmented_messages_are_whole_for_the_session(gateway_server):
    server = gateway_server(listen=LEAN)
    ws_url, params = await twilio_answer(server)
    async with connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(ws_url, {})},
                       compression=None, proxy=None) as ws:
        start = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "1" * 32, "start": {
            "streamSid": "MZ" + "1" * 32, "accountSid": TWILIO_SID, "callSid": "CA" + "7" * 32, "tracks": ["inbound"],
            "customParameters": params, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        await ws.send([start[i:i + 7] for i in range(0, len(start), 7)])  # one message in many frames
        media = json.dumps({"event": "media", "streamSid": "MZ" + "1" * 32,
                            "media": {"track": "inbound", "payload": base64.b64encode(SILENCE).decode()}})
        for _ in range(3):
            await ws.send([media[:40], media[40:90], media[90:]])
        echoed = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(3)]
        assert [m["event"] for m in echoed] == ["media"] * 3
        assert all(base64.b64decode(m["media"]["payload"]) == SILENCE for m in echoed)
        await ws.send([json.dumps(STOP)[:10], json.dumps(STOP)[10:]])
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1000
    call = await eventually(lambda: (c := admin_call(server)) and any(t["kind"] == "media.ended" for t in c["timeline"]) and c)
    ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
    assert ended["frames_in"] == 3 and ended["bad_messages"] == 0 and ended["reason"] == "provider sent stop"


async def test_pings_are_answered_before_and_during_the_session(gateway_server):
    server = gateway_server(listen=LEAN)
    ws_url, _ = await twilio_answer(server)
    async with connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(ws_url, {})},
                       compression=None, proxy=None) as ws:
        await asyncio.wait_for(await ws.ping(b"before-start"), 5)  # before the stream token is read
    client = await TwilioClient.open(server)
    await client.media(SILENCE)
    assert (await client.receive_json())["event"] == "media"
    latency = await asyncio.wait_for(await client.ws.ping(b"during"), 5)
    assert latency >= 0
    await client.ws.close()


async def test_a_close_the_provider_begins_is_answered_and_ends_the_session(gateway_server):
    server = gateway_server(listen=LEAN)
    client = await TwilioClient.open(server)
    await client.media(SILENCE)
    assert (await client.receive_json())["event"] == "media"
    await client.ws.close(code=1001, reason="going away")
    assert client.ws.close_code == 1001  # the gateway's answer echoed the code
    assert client.ws.protocol.close_rcvd is not None and not client.ws.protocol.close_rcvd_then_sent
    call = await eventually(lambda: (c := admin_call(server)) and any(t["kind"] == "media.ended" for t in c["timeline"]) and c)
    ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
    assert ended["reason"] == "socket closed (1001)"


async def test_a_close_the_gateway_begins_is_a_clean_handshake(gateway_server):
    server = gateway_server(listen=LEAN)
    client = await TwilioClient.open(server, params={"stream_token": "forged"})
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.ws.recv(), 10)
    assert closed.value.rcvd.code == 1008 and closed.value.rcvd_then_sent  # the gateway's close, answered by the client
    await asyncio.wait_for(client.ws.wait_closed(), 10)


async def test_binary_message_over_the_limit_is_refused_1009(gateway_server):
    server = gateway_server(listen=LEAN)
    client = await TwilioClient.open(server)
    await client.ws.send(b"\0" * ((1 << 20) + 1))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.ws.recv(), 10)
    assert closed.value.rcvd.code == 1009


async def test_other_websocket_paths_stay_on_uvicorns_implementation(gateway_server):
    server = gateway_server(listen=LEAN)
    with pytest.raises(websockets.InvalidStatus) as refused:  # no such route: Starlette's router refuses it
        await connect(server.url.replace("http", "ws") + "/api/v1/not-media", proxy=None)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("layer", ["picows", "uvicorn"])
async def test_twilio_round_trip_on_either_layer(gateway_server, layer):
    """The Starlette route stays the fallback (`listen.media_websocket: uvicorn`)."""
    server = gateway_server(listen={"media_websocket": layer})
    client = await TwilioClient.open(server)
    for _ in range(5):
        await client.media(SILENCE)
    echoed = [await client.receive_json() for _ in range(5)]
    assert [m["event"] for m in echoed] == ["media"] * 5
    await client.send(STOP)
    await asyncio.wait_for(client.ws.wait_closed(), 10)
    assert client.ws.close_code == 1000


async def test_the_upgrade_signature_is_checked_over_the_public_url_a_trusted_proxy_names(gateway_server):
    server = gateway_server(listen=LEAN, trusted_proxies=["127.0.0.1/32"])
    ws_url, params = await twilio_answer(server)
    path = urllib.parse.urlsplit(ws_url).path
    public = "wss://gw.example.com" + path
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com"}
    with pytest.raises(websockets.InvalidStatus) as refused:  # signed over the public URL, but no proxy said so
        await connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(public, {})}, proxy=None)
    assert refused.value.response.status_code == 403
    ws = await connect(ws_url, additional_headers={"X-Twilio-Signature": twilio_signature(public, {}), **forwarded},
                       compression=None, proxy=None)
    client = TwilioClient(ws)
    await client.send({"event": "start", "start": {"streamSid": client.sid, "accountSid": TWILIO_SID, "callSid": "CA" + "7" * 32,
                                                   "tracks": ["inbound"], "customParameters": params}})
    await client.media(SILENCE)
    assert (await client.receive_json())["event"] == "media"
    await ws.close()
