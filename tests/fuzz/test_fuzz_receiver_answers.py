"""Fuzzing what a webhook receiver answers: whoever runs the receiver controls the status line,
the headers (Retry-After, Content-Length, Transfer-Encoding) and the body. Each attempt ends
in an outcome (success, retry, fail, disable), never an exception. A raw TCP server on
loopback writes the answer byte for byte."""

from __future__ import annotations

import asyncio
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.webhooks.clients import EndpointClients
from gateway.webhooks.policy import Outcome
from gateway.webhooks.sender import build_request, send_attempt
from gateway.webhooks.subscription import Subscription

ENVELOPE = {"type": "call.ended", "timestamp": "2026-01-01T00:00:00Z", "data": {}}
latin1 = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=30)
status_lines = st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.1 503 Busy", "HTTP/1.0 429 Slow", "HTTP/1.1 \u00b200 OK", "HTTP/1.1 2",
                                "HTTP/2 200 OK", "HTTP/1.1 100 Continue", "junk"]) | latin1.map(lambda t: "HTTP/1.1 " + t)
header_lines = st.lists(st.tuples(st.sampled_from(["Retry-After", "Content-Length", "Transfer-Encoding", "Connection", "Content-Type"])
                                  | latin1.filter(lambda t: ":" not in t), latin1), max_size=4)


async def answer_with(raw: bytes) -> object:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(raw)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    subscription = Subscription.model_validate({"name": "r", "events": ["call.ended"], "url": f"http://127.0.0.1:{port}/hook",
                                                "signing": {"scheme": "none"}, "timeout": 5, "allow_networks": ["127.0.0.0/8"]})
    clients = EndpointClients()
    try:
        prepared = build_request(subscription, ENVELOPE, {}, {}, message_id="msg_fuzz", now=time.time())
        return await send_attempt(clients, prepared, subscription)
    finally:
        await clients.aclose()
        server.close()
        await server.wait_closed()


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(status=status_lines, headers=header_lines, body=st.binary(max_size=100))
@example(status="HTTP/1.1 \u00b200 OK", headers=[], body=b"")  # int("²00") raised ValueError
@example(status="HTTP/1.1 200 OK", headers=[("Content-Length", "\u00b2")], body=b"")
@example(status="HTTP/1.1 200 OK", headers=[("Content-Length", "9" * 5000)], body=b"")  # int() refuses 4300+ digits
@example(status="HTTP/1.1 503 Busy", headers=[("Retry-After", "\u00b2")], body=b"")
@example(status="HTTP/1.1 200 OK", headers=[("Transfer-Encoding", "chunked")], body="\u00b2\r\nxx\r\n0\r\n\r\n".encode("latin-1"))
def test_any_answer_is_an_outcome(status, headers, body):
    head = "\r\n".join([status, *(f"{name}: {value}" for name, value in headers)]) + "\r\n\r\n"
    result = asyncio.run(answer_with(head.encode("latin-1") + body))
    assert result.outcome in set(Outcome)
