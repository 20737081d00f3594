"""Slow, half-open and broken-off clients against a real `gateway serve`: cut off after the read
deadline, media sockets without a token closed and bounded, a body cut short one log line."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from support import API_KEY, base_config

LIMITS = {"read_timeout_seconds": 1.5, "media_token_seconds": 1, "max_unverified_media_sockets": 5}


@pytest.fixture
def proc(gateway_process, tmp_path):
    return gateway_process(base_config(tmp_path, limits=LIMITS))


def _trickle(port: int, head: bytes, trickle: bytes, budget: float = 20.0) -> bytes:
    """Send `head`, then `trickle` a byte every 0.3 s; what the server answered once it closed
    the connection (AssertionError when it still had not after `budget` seconds)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        sock.settimeout(0.3)
        received = b""
        deadline = time.monotonic() + budget
        for byte in [trickle[i:i + 1] for i in range(len(trickle))] + [b""] * 1000:
            if time.monotonic() > deadline:
                break
            try:
                if byte:
                    sock.sendall(byte)
                chunk = sock.recv(4096)
                if not chunk:
                    return received
                received += chunk
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return received
    raise AssertionError(f"the connection was still open after {budget} s (received {received!r})")


def test_slow_headers_slow_bodies_and_silent_connections_are_cut_off(proc):
    head = b"POST /api/v1/telephony/status-callback/run-slow HTTP/1.1\r\nHost: x\r\n"
    answered = _trickle(proc.port, head, b"X-Slow: " + b"a" * 200)
    assert answered.startswith(b"HTTP/1.1 408 ")
    body_head = head + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n"
    assert _trickle(proc.port, body_head, b"a" * 200).startswith(b"HTTP/1.1 408 ")
    assert _trickle(proc.port, b"", b"").startswith(b"HTTP/1.1 408 ")  # connected, then nothing at all
    with httpx.Client(base_url=proc.url) as client:  # a client that sends its requests promptly is served
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(0.5)
        text = client.get("/metrics").text
    assert 'gateway_refusals_total{limit="request_read_timeout"} 3.0' in text
    assert "did not arrive within 1.5 s" in proc.log()


def test_a_body_cut_short_is_one_log_line_without_a_traceback(proc):
    requests = [
        b"POST /api/v1/telephony/status-callback/run-cut HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: x\r\n",
        b"POST /api/v1/telephony/webhook/wf/u/run-cut HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: x\r\n",
        b"POST /api/v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n",
    ]
    for head in requests:
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            sock.sendall(head + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\nabc")
            time.sleep(0.2)
    deadline = time.monotonic() + 10
    while proc.log().count("went away before its whole body arrived") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    log = proc.log()
    assert log.count("went away before its whole body arrived") == 3
    assert "Traceback" not in log and "ERROR" not in log and "unhandled error" not in log
    for path in ("/api/v1/telephony/status-callback/run-cut", "/api/v1/telephony/webhook/wf/u/run-cut", "/api/v1/calls"):
        assert f"POST {path} 400 " in log  # the request's one line says how it ended
    assert "gateway_bodies_cut_short_total 3.0" in httpx.get(proc.url + "/metrics").text


async def test_media_sockets_without_a_token_are_closed_and_bounded(proc):
    url = proc.url.replace("http", "ws") + "/api/v1/telephony/ws/wf/u/run-idle"
    idle = [await connect(url, proxy=None) for _ in range(5)]  # no signature, no token: waiting for one
    with pytest.raises(websockets.InvalidStatus):
        await connect(url, proxy=None)  # a sixth is over max_unverified_media_sockets
    for ws in idle:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 20)
        assert closed.value.rcvd.code == 1008 and "no stream token within 1 s" in closed.value.rcvd.reason
    async with connect(url, proxy=None) as again:  # their places are free again
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(again.recv(), 20)
    async with httpx.AsyncClient() as client:
        text = (await client.get(proc.url + "/metrics")).text
    assert 'gateway_refusals_total{limit="max_unverified_media_sockets"} 1.0' in text
