"""The agent link's WebSocket client against real servers on loopback: a websockets server for
the ordinary cases, and a raw TCP server that writes exact bytes (split anywhere) for the
fast-path framing, fragments, control frames and protocol errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import struct

import pytest
import websockets
from websockets.asyncio.server import serve
from websockets.frames import Close, Frame, Opcode

from gateway.media.agent_socket import AgentSocket, SocketClosed
from support import eventually

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: Opcode, data: bytes, *, fin: bool = True, mask: bool = False) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=mask)


def unmask_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each client frame (masked, as clients must send)."""
    out, i = [], 0
    while i < len(data):
        first, second = data[i], data[i + 1]
        assert second & 0x80, "client frames are masked"
        size, i = second & 0x7F, i + 2
        if size == 126:
            size, i = struct.unpack("!H", data[i:i + 2])[0], i + 2
        elif size == 127:
            size, i = struct.unpack("!Q", data[i:i + 8])[0], i + 8
        key, i = data[i:i + 4], i + 4
        payload = bytes(b ^ key[j % 4] for j, b in enumerate(data[i:i + size]))
        out.append((first & 0x0F, payload))
        i += size
    return out


class RawServer:
    """Accepts one WebSocket handshake, then lets the test write and read raw bytes."""

    def __init__(self, *, status: int = 101, extra: bytes = b"") -> None:
        self.status = status
        self.extra = extra  # written right after the handshake response, in the same write
        self.connected = asyncio.Event()
        self.received = bytearray()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
        if self.status == 101:
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + self.extra)
        else:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        self.reader, self.writer = reader, writer
        self.connected.set()
        while chunk := await reader.read(65536):
            self.received += chunk

    async def write(self, data: bytes, *, most: int = 40, seed: int = 0) -> None:
        """Write `data` in random pieces of 1..`most` bytes, yielding between them."""
        rng = random.Random(seed)
        i = 0
        while i < len(data):
            step = rng.randint(1, most)
            self.writer.write(data[i:i + step])
            await self.writer.drain()
            await asyncio.sleep(0)
            i += step

    async def __aenter__(self) -> "RawServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/agent"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def opened(url: str, **kw) -> AgentSocket:
    sock = AgentSocket(url, **kw)
    await sock.open({"X-Test": "1"}, timeout=3, user_agent="test")
    return sock


async def test_messages_of_every_length_form_arrive_whole_however_the_bytes_are_split():
    messages = [b"", b"\x01" * 125, b"\x02" * 126, "héllo", b"\x03" * 65535, b"\x04" * 65536, b"\x05" * 70000, "x" * 200]
    stream = b"".join(frame(Opcode.TEXT if isinstance(m, str) else Opcode.BINARY, m.encode() if isinstance(m, str) else m)
                      for m in messages)
    for seed, most in ((1, 1), (2, 40), (3, 3000)):  # byte by byte, small pieces, large pieces
        async with RawServer() as server:
            sock = await opened(server.url)
            await server.connected.wait()
            data = stream if most > 1 else stream[:1000]
            await server.write(data, most=most, seed=seed)
            expected = messages if most > 1 else messages[:4]
            got = [await asyncio.wait_for(sock.receive(), 5) for _ in expected]
            assert got == expected
            sock.abort()


async def test_frames_in_the_handshake_packet_and_a_split_frame_after_it():
    first = frame(Opcode.BINARY, b"\x07" * 300)
    second = frame(Opcode.TEXT, b'{"type":"clear"}')
    async with RawServer(extra=first + second[:3]) as server:
        sock = await opened(server.url)
        await server.connected.wait()
        await server.write(second[3:] + frame(Opcode.BINARY, b"\x08" * 10), most=2)
        assert [await asyncio.wait_for(sock.receive(), 5) for _ in range(3)] == [b"\x07" * 300, '{"type":"clear"}', b"\x08" * 10]
        sock.abort()


async def test_fragmented_message_with_a_ping_in_between_and_the_fast_path_after_it():
    data = (frame(Opcode.TEXT, b'{"type":', fin=False) + frame(Opcode.PING, b"p1") + frame(Opcode.CONT, b'"mark",', fin=False)
            + frame(Opcode.CONT, b'"name":"m"}') + frame(Opcode.BINARY, b"\x09" * 20))
    async with RawServer() as server:
        sock = await opened(server.url)
        await server.connected.wait()
        await server.write(data)
        assert await asyncio.wait_for(sock.receive(), 5) == '{"type":"mark","name":"m"}'
        assert await asyncio.wait_for(sock.receive(), 5) == b"\x09" * 20
        await asyncio.sleep(0.05)
        assert (Opcode.PONG.value, b"p1") in unmask_frames(bytes(server.received))
        sock.abort()


async def test_close_from_the_agent_is_answered_and_reported_after_the_queued_messages():
    async with RawServer() as server:
        sock = await opened(server.url)
        await server.connected.wait()
        await server.write(frame(Opcode.BINARY, b"last") + frame(Opcode.CLOSE, Close(4000, "bye").serialize()))
        assert await asyncio.wait_for(sock.receive(), 5) == b"last"
        with pytest.raises(SocketClosed, match="4000"):
            await asyncio.wait_for(sock.receive(), 5)
        with pytest.raises(SocketClosed):
            sock.send_bytes(b"\x00" * 640)
        await asyncio.sleep(0.05)
        assert unmask_frames(bytes(server.received))[-1][0] == Opcode.CLOSE.value
        sock.abort()


@pytest.mark.parametrize("bad, code", [
    (frame(Opcode.BINARY, b"\x01" * 10, mask=True), 1002),  # servers must not mask
    (frame(Opcode.BINARY, b"\x01" * 2000), 1009),  # over max_size
    (frame(Opcode.TEXT, b"\xff\xfe"), 1007),  # not UTF-8
    (frame(Opcode.CONT, b"nothing to continue"), 1002),
    (bytes([0xC2, 0x01, 0x41]), 1002),  # RSV1 without an extension
])
async def test_protocol_errors_end_the_connection_with_the_right_code(bad, code):
    async with RawServer() as server:
        sock = await opened(server.url, max_size=1000)
        await server.connected.wait()
        await server.write(frame(Opcode.BINARY, b"ok") + bad)
        assert await asyncio.wait_for(sock.receive(), 5) == b"ok"
        with pytest.raises(SocketClosed):
            await asyncio.wait_for(sock.receive(), 5)
        await asyncio.sleep(0.05)
        closes = [payload for opcode, payload in unmask_frames(bytes(server.received)) if opcode == Opcode.CLOSE.value]
        assert closes and Close.parse(closes[0]).code == code
        sock.abort()


async def test_refused_handshake_and_unreachable_agent_raise():
    async with RawServer(status=403) as server:
        with pytest.raises(websockets.exceptions.InvalidStatus):
            await opened(server.url)
    with pytest.raises(OSError):
        await opened("ws://127.0.0.1:9/nobody")
    with pytest.raises(SocketClosed):
        AgentSocket("http://not-a-websocket")


async def test_sent_messages_are_read_back_by_a_real_server_and_closed_cleanly():
    received: list = []
    done = asyncio.Event()

    async def handler(ws):
        received.append(ws.request.headers["X-Test"])
        async for message in ws:
            received.append(message)
        done.set()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        sock = await opened(f"ws://127.0.0.1:{port}/")
        sizes = [0, 1, 125, 126, 640, 65535, 65536, 100000]
        for size in sizes:
            sock.send_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
        sock.send_text('{"type":"stop"}')
        await sock.close()
        await asyncio.wait_for(done.wait(), 5)
    assert received[0] == "1"
    assert [len(m) for m in received[1:-1]] == sizes and received[-1] == '{"type":"stop"}'
    with pytest.raises(SocketClosed):
        await sock.receive()


async def test_keepalive_ping_without_pong_ends_the_connection():
    async with RawServer() as server:
        sock = AgentSocket(server.url, ping_interval=0.05, ping_timeout=0.1)
        await sock.open({}, timeout=3, user_agent="test")
        await server.connected.wait()
        with pytest.raises(SocketClosed, match="pong"):
            await asyncio.wait_for(sock.receive(), 3)


async def test_pushed_messages_wait_while_held_and_arrive_in_order_with_the_close_after_them():
    """Push mode (`listen`): a held socket pushes nothing, stops reading once `max_queue` wait (TCP
    pushes back on the agent), and released, pushes what waited in order, the close last."""
    messages = [bytes([n]) * 100 for n in range(40)]
    async with RawServer() as server:
        sock = await opened(server.url, max_queue=8)
        await server.connected.wait()
        got: list = []
        closed: list[str] = []

        def on_message(message):
            got.append(message)
            if len(got) == 2:
                sock.hold(True)  # the listener is busy from the second message on

        sock.listen(on_message, closed.append)
        await server.write(b"".join(frame(Opcode.BINARY, m) for m in messages)
                           + frame(Opcode.CLOSE, Close(1000, "done").serialize()), most=3000)
        await asyncio.sleep(0.2)
        assert got == messages[:2] and not closed
        assert sock.transport.is_reading() is False  # 8 waiting: reading paused
        sock.hold(False)
        await eventually(lambda: closed, timeout=5, what="the close, after every message")
        assert got == messages and "1000" in closed[0]
        sock.abort()
