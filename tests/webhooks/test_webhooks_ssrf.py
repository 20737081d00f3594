"""SSRF guard: non-public destinations are refused before any connection; allow_networks opens them."""

from __future__ import annotations

import ipaddress
import time

import httpx
import pytest

from gateway.webhooks.clients import EndpointClients
from gateway.webhooks.policy import Outcome
from gateway.webhooks.sender import build_request, send_attempt
from gateway.webhooks.ssrf import (
    DestinationRefused,
    GuardedTransport,
    address_problem,
    embedded_ipv4,
    resolve_destination,
    vet_address,
)
from gateway.webhooks.subscription import Subscription

ENVELOPE = {"type": "call.ended", "timestamp": "2026-01-01T00:00:00Z", "data": {}}


def subscription(url: str, **fields) -> Subscription:
    return Subscription.model_validate(
        {"name": "target", "events": ["call.ended"], "url": url, "signing": {"scheme": "none"}, "timeout": 5, **fields}
    )


async def attempt(sub: Subscription, clients: EndpointClients | None = None):
    own = clients is None
    clients = clients or EndpointClients()
    try:
        prepared = build_request(sub, ENVELOPE, {}, {}, message_id="msg_ssrf", now=time.time())
        return await send_attempt(clients, prepared, sub)
    finally:
        if own:
            await clients.aclose()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.10", "198.18.0.1",
        "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1", "2001:db8::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "::10.0.0.1",
        "2002:7f00:1::", "2002:a9fe:a9fe::1", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::a9fe:a9fe",
    ],
)
def test_non_public_addresses_have_a_problem(address):
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_pass(address):
    assert address_problem(ipaddress.ip_address(address)) is None


def test_embedded_ipv4_forms():
    assert str(embedded_ipv4(ipaddress.IPv6Address("::ffff:127.0.0.1"))) == "127.0.0.1"
    assert str(embedded_ipv4(ipaddress.IPv6Address("2002:7f00:1::"))) == "127.0.0.1"
    assert str(embedded_ipv4(ipaddress.IPv6Address("64:ff9b::a9fe:a9fe"))) == "169.254.169.254"
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700:4700::1111")) is None


def test_allow_networks_let_named_cidrs_through():
    loopback = [ipaddress.ip_network("127.0.0.0/8")]
    assert str(vet_address("h", "127.0.0.1", loopback)) == "127.0.0.1"
    assert vet_address("h", "::ffff:127.0.0.1", loopback) == ipaddress.ip_address("::ffff:127.0.0.1")
    with pytest.raises(DestinationRefused, match=r"refused to connect to h \(10\.0\.0\.1\): private"):
        vet_address("h", "10.0.0.1", loopback)


async def test_any_non_public_answer_refuses_the_host():
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.1.2.3"]

    with pytest.raises(DestinationRefused, match="mixed.example"):
        await resolve_destination("mixed.example", 443, (), resolver)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost", "[::ffff:7f00:1]"])
async def test_loopback_destinations_are_refused_before_connecting(counter, host):
    result = await attempt(subscription(f"http://{host}:{counter.port}/hook"))
    assert result.outcome is Outcome.FAIL
    assert result.status is None
    assert "DestinationRefused" in result.error and "127.0.0.1" in result.error
    assert counter.accepted == 0


@pytest.mark.parametrize(("host", "reason"), [("10.0.0.1", "private"), ("169.254.169.254", "link-local"), ("[fd00::1]", "private")])
async def test_internal_destinations_are_refused(host, reason):
    started = time.perf_counter()
    result = await attempt(subscription(f"http://{host}/latest/meta-data/"))
    assert result.outcome is Outcome.FAIL
    assert reason in result.error
    assert time.perf_counter() - started < 1.0  # refused, not timed out


async def test_allow_networks_reaches_a_loopback_receiver(receiver):
    result = await attempt(subscription(receiver.url("/hook"), allow_networks=["127.0.0.0/8"]))
    assert result.outcome is Outcome.SUCCESS and result.status == 200
    assert len(receiver.on("/hook")) == 1


async def test_host_header_keeps_the_name_while_connecting_to_the_vetted_address(receiver):
    result = await attempt(subscription(receiver.url("/named", host="localhost"), allow_networks=["127.0.0.0/8"]))
    assert result.outcome is Outcome.SUCCESS
    assert receiver.on("/named")[0].headers["host"] == f"localhost:{receiver.port}"


async def test_proxy_environment_cannot_bypass_the_guard(counter, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{counter.port}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{counter.port}")
    result = await attempt(subscription("http://10.0.0.1/hook"))
    assert result.outcome is Outcome.FAIL and "DestinationRefused" in result.error
    assert counter.accepted == 0


async def test_redirects_are_not_followed(receiver):
    elsewhere = receiver.url("/elsewhere")
    receiver.handler = lambda received: receiver.reply(302, b"", {"location": elsewhere})
    result = await attempt(subscription(receiver.url("/hook"), allow_networks=["127.0.0.0/8"]))
    assert result.outcome is Outcome.FAIL and result.status == 302
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_guarded_transport_used_directly_refuses(counter):
    async with httpx.AsyncClient(transport=GuardedTransport(), trust_env=False) as client:
        with pytest.raises(DestinationRefused):
            await client.get(f"http://127.0.0.1:{counter.port}/")
    assert counter.accepted == 0


async def test_unresolvable_host_is_a_retryable_network_error():
    async def resolver(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    clients = EndpointClients(resolver=resolver)
    try:
        result = await attempt(subscription("http://does-not-exist.example/hook"), clients)
    finally:
        await clients.aclose()
    assert result.outcome is Outcome.RETRY
    assert "cannot resolve does-not-exist.example" in result.error
