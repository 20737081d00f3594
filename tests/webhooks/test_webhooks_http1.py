"""The delivery path's HTTP/1.1 pool against a scripted raw server: framing, keep-alive, and
connections the server ends."""

from __future__ import annotations

import asyncio
import ipaddress

import httpx
import pytest

from gateway.webhooks.auth import ssl_context_for
from gateway.webhooks.clients import Http1Pool
from gateway.webhooks.ssrf import DestinationRefused

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class RawServer:
    """Answers each request on a connection with the next scripted raw response."""

    def __init__(self, answers: list[bytes], *, close_after: int | None = None, close_on: frozenset[int] = frozenset()) -> None:
        self.answers = answers
        self.close_after = close_after  # requests per connection
        self.close_on = close_on  # request numbers (from 1) after which the connection ends
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> "RawServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.writers: list[asyncio.StreamWriter] = []
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()
        await asyncio.sleep(0.01)  # let the handlers see their connections end

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                writer.write(self.answers[min(len(self.requests) - 1, len(self.answers) - 1)])
                await writer.drain()
                served += 1
                if (self.close_after is not None and served >= self.close_after) or len(self.requests) in self.close_on:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def pool() -> Http1Pool:
    return Http1Pool(LOOPBACK, ssl_context_for(None))


async def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given():
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
    async with RawServer([ok]) as server:
        http = pool()
        for n in range(3):
            answer = await http.request("POST", server.url + "/hook?x=1", {"X-Id": str(n), "User-Agent": "mine"},
                                        b'{"n":1}', max_body=1024)
            assert answer.status == 200 and answer.body == b'{"ok":true}'
            assert answer.headers["content-type"] == "application/json"
        await http.aclose()
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("POST /hook?x=1 HTTP/1.1\r\n")
    assert f"Host: {server.url.split('//')[1]}\r\n" in first
    assert "X-Id: 0\r\n" in first and "User-Agent: mine\r\n" in first and "Content-Length: 7\r\n" in first
    assert first.endswith('\r\n\r\n{"n":1}')


async def test_chunked_close_delimited_interim_and_no_body_answers():
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nX-T: 1\r\n\r\n"
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it"
    async with RawServer([chunked, interim, until_close], close_on=frozenset({3})) as server:
        http = pool()
        first = await http.request("POST", server.url + "/a", {}, b"x", max_body=1024)
        assert (first.status, first.body) == (201, b"abcdefg")
        second = await http.request("POST", server.url + "/a", {}, b"x", max_body=1024)
        assert (second.status, second.body) == (204, b"")
        third = await http.request("POST", server.url + "/a", {}, b"x", max_body=1024)
        assert (third.status, third.body) == (200, b"all of it")
        await http.aclose()
    assert server.connections == 1


async def test_body_is_cut_at_the_limit_and_that_connection_is_dropped():
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 100
    async with RawServer([big]) as server:
        http = pool()
        answer = await http.request("POST", server.url + "/a", {}, b"", max_body=10)
        assert answer.body == b"z" * 10
        await http.request("POST", server.url + "/a", {}, b"", max_body=10)
        await http.aclose()
    assert server.connections == 2


async def test_connection_close_and_a_server_that_hangs_up_between_requests():
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    async with RawServer([closing]) as server:
        http = pool()
        await http.request("POST", server.url + "/a", {}, b"", max_body=10)
        await http.request("POST", server.url + "/a", {}, b"", max_body=10)
        await http.aclose()
    assert server.connections == 2
    async with RawServer([ok], close_after=1) as server:  # ends each connection after one answer
        http = pool()
        await http.request("POST", server.url + "/a", {}, b"", max_body=10)
        await asyncio.sleep(0.05)  # the hang-up is seen before the next request
        answer = await http.request("POST", server.url + "/a", {}, b"", max_body=10)
        assert answer.status == 200
        await http.aclose()
    assert server.connections == 2


async def test_no_answer_at_all_is_a_protocol_error_and_malformed_status_too():
    async with RawServer([b""], close_after=1) as server:
        http = pool()
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await http.request("POST", server.url + "/a", {}, b"", max_body=10)
        await http.aclose()
    async with RawServer([b"SMTP ready\r\n\r\n"]) as server:
        http = pool()
        with pytest.raises(httpx.RemoteProtocolError, match="malformed status line"):
            await http.request("POST", server.url + "/a", {}, b"", max_body=10)
        await http.aclose()


async def test_the_guard_refuses_before_connecting():
    async with RawServer([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]) as server:
        http = Http1Pool((), ssl_context_for(None))  # nothing allowed: loopback is refused
        with pytest.raises(DestinationRefused):
            await http.request("POST", server.url + "/a", {}, b"", max_body=10)
        await http.aclose()
    assert server.connections == 0
