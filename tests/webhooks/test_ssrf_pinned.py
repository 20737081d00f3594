"""The SSRF guard pinned exactly: the reason for every kind of address, public addresses let
through, allow_networks, resolution order and errors, and the guarded transport carrying a
request unchanged to the vetted address (real loopback receivers, real DNS for localhost)."""

from __future__ import annotations

import ipaddress

import httpcore
import httpx
import pytest

from gateway.webhooks.ssrf import (
    DestinationRefused,
    GuardedNetworkBackend,
    GuardedTransport,
    address_problem,
    is_allowed,
    resolve_destination,
    system_resolve,
    vet_address,
)

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("100.64.0.1", "shared address space (CGNAT)"), ("100.127.255.255", "shared address space (CGNAT)"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("240.0.0.1", "private"), ("192.0.2.10", "private"),
    ("fe80::1", "link-local"), ("fc00::1", "private"), ("ff02::1", "multicast"), ("ff0e::1", "multicast"),
    ("2001:db8::1", "private"), ("fec0::1", "site-local"), ("100::1", "private"),
    ("::", "unspecified IPv4 0.0.0.0 inside IPv6"), ("::1", "private IPv4 0.0.0.1 inside IPv6"),
    ("::ffff:127.0.0.1", "loopback IPv4 127.0.0.1 inside IPv6"), ("::ffff:10.0.0.1", "private IPv4 10.0.0.1 inside IPv6"),
    ("::127.0.0.1", "loopback IPv4 127.0.0.1 inside IPv6"), ("2002:7f00:1::", "loopback IPv4 127.0.0.1 inside IPv6"),
    ("64:ff9b::a00:1", "private IPv4 10.0.0.1 inside IPv6"), ("64:ff9b:1::a9fe:a9fe", "link-local IPv4 169.254.169.254 inside IPv6"),
    ("::ffff:100.64.0.1", "shared address space (CGNAT) IPv4 100.64.0.1 inside IPv6"),
    ("::ffff:224.0.0.1", "multicast IPv4 224.0.0.1 inside IPv6"), ("::ffff:0.0.0.0", "unspecified IPv4 0.0.0.0 inside IPv6"),
    ("::ffff:169.254.1.1", "link-local IPv4 169.254.1.1 inside IPv6"),
])
def test_each_kind_of_address_has_its_reason(address, reason):
    assert address_problem(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.215.14", "100.63.255.255", "100.128.0.0", "2606:4700:4700::1111", "2001:4860::8888",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "64:ff9b:1::808:808", "2002:808:808::1",
])
def test_public_addresses_have_no_problem_and_are_vetted(address):
    assert address_problem(ipaddress.ip_address(address)) is None
    assert vet_address("h", address) == ipaddress.ip_address(address)


def test_refusal_names_host_address_and_reason():
    with pytest.raises(DestinationRefused) as info:
        vet_address("hooks.example", "fe80::1%eth0")
    error = info.value
    assert (error.host, error.address) == ("hooks.example", "fe80::1")
    assert error.reason == "link-local address, not in allow_networks"
    assert str(error) == "refused to connect to hooks.example (fe80::1): link-local address, not in allow_networks"


def test_allow_networks_any_iterable_and_matching_family():
    assert vet_address("h", "127.0.0.5", iter(LOOPBACK)) == ipaddress.ip_address("127.0.0.5")
    assert vet_address("h", "::ffff:127.0.0.1", (n for n in LOOPBACK)) == ipaddress.ip_address("::ffff:127.0.0.1")
    assert is_allowed(ipaddress.ip_address("::1"), LOOPBACK) is False
    assert is_allowed(ipaddress.ip_address("::1"), [ipaddress.ip_network("::1/128")]) is True
    assert is_allowed(ipaddress.ip_address("127.0.0.1"), [ipaddress.ip_network("::/0")]) is False
    with pytest.raises(DestinationRefused):
        vet_address("h", "10.0.0.1", LOOPBACK)


async def test_system_resolver_answers_localhost_without_repeats():
    addresses = await system_resolve("localhost", 80)
    assert "127.0.0.1" in addresses and len(addresses) == len(set(addresses))
    assert all(ipaddress.ip_address(a) for a in addresses)


async def test_ip_literal_hosts_skip_the_resolver():
    async def resolver(host, port):
        raise AssertionError("an IP literal must not be resolved")

    assert await resolve_destination("8.8.8.8", 443, (), resolver) == ["8.8.8.8"]
    assert await resolve_destination("::1", 443, [ipaddress.ip_network("::1/128")], resolver) == ["::1"]


@pytest.mark.parametrize(("error", "message"), [(OSError("no such host"), "cannot resolve h.example: no such host"),
                                                (UnicodeError("bad label"), "cannot resolve h.example: bad label")])
async def test_resolution_errors_become_connect_errors(error, message):
    async def resolver(host, port):
        raise error

    with pytest.raises(httpcore.ConnectError, match=message):
        await resolve_destination("h.example", 443, (), resolver)


async def test_no_addresses_is_a_connect_error():
    async def resolver(host, port):
        return []

    with pytest.raises(httpcore.ConnectError, match="cannot resolve h.example: no addresses"):
        await resolve_destination("h.example", 443, (), resolver)


async def test_resolver_gets_host_and_port_and_every_address_is_vetted():
    seen = []

    async def resolver(host, port):
        seen.append((host, port))
        return ["8.8.8.8", "127.0.0.1"]

    with pytest.raises(DestinationRefused, match="127.0.0.1"):
        await resolve_destination("h.example", 8443, (), resolver)
    assert seen == [("h.example", 8443)]
    assert await resolve_destination("h.example", 8443, LOOPBACK + [ipaddress.ip_network("8.8.8.8/32")], resolver) == ["8.8.8.8", "127.0.0.1"]


async def test_backend_connects_to_the_first_vetted_address_that_answers(counter):
    from support import eventually, free_port

    async def resolver(host, port):
        return ["127.0.0.2", "127.0.0.1"]  # nothing listens on 127.0.0.2 at this port

    backend = GuardedNetworkBackend(LOOPBACK, resolver=resolver)
    stream = await backend.connect_tcp("receiver.test", counter.port, timeout=5)
    await stream.aclose()
    await eventually(lambda: counter.accepted == 1, what="one connection, to 127.0.0.1")
    dead = free_port()
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("receiver.test", dead, timeout=5)


async def test_backend_refuses_unix_sockets_and_sleeps():
    backend = GuardedNetworkBackend()
    with pytest.raises(DestinationRefused) as info:
        await backend.connect_unix_socket("/run/docker.sock")
    assert info.value.reason == "unix sockets are not webhook destinations"
    assert info.value.host == "/run/docker.sock" and info.value.address == "unix socket"
    await backend.sleep(0)


async def test_guarded_transport_carries_the_request_unchanged(receiver):
    async def resolver(host, port):
        return ["127.0.0.1"]

    transport = GuardedTransport(LOOPBACK, resolver=resolver, max_connections=2)
    receiver.handler = lambda received: receiver.reply(207, b"multi", {"x-reply": "yes"})
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            url = receiver.url("/path/x?q=1&r=%20", host="hooks.test")
            response = await client.put(url, content=b"payload-bytes", headers={"X-Custom": "v1"})
    finally:
        await transport.aclose()
    assert response.status_code == 207 and response.content == b"multi" and response.headers["x-reply"] == "yes"
    got = receiver.on("/path/x")[0]
    assert got.method == "PUT" and got.body == b"payload-bytes" and got.headers["x-custom"] == "v1"
    assert got.query == "q=1&r=%20" and got.headers["host"] == f"hooks.test:{receiver.port}"


async def test_guarded_transport_maps_connect_failures_to_httpx_errors():
    from support import free_port

    transport = GuardedTransport(LOOPBACK)
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{free_port()}/")
    finally:
        await transport.aclose()


# --- the transport's plumbing: what it hands httpcore and what it hands back ------------------



async def _loopback(host, port):
    return ["127.0.0.1"]


@pytest.mark.parametrize("address", ["4000::1", "1::1", "fe00::1"])
def test_reserved_ipv6_is_refused_as_reserved(address):
    assert address_problem(ipaddress.ip_address(address)) == "reserved"


def test_only_the_first_scope_id_separator_counts():
    with pytest.raises(DestinationRefused) as info:
        vet_address("h", "fe80::1%a%b")
    assert info.value.address == "fe80::1"


async def test_backend_hands_the_port_to_the_resolver(counter):
    seen = []

    async def resolver(host, port):
        seen.append((host, port))
        return ["127.0.0.1"]

    stream = await GuardedNetworkBackend(LOOPBACK, resolver=resolver).connect_tcp("r.test", counter.port, timeout=5)
    await stream.aclose()
    assert seen == [("r.test", counter.port)]


async def test_backend_passes_local_address_and_socket_options():
    import asyncio
    import socket

    peers = []

    async def handle(reader, writer):
        peers.append(writer.get_extra_info("peername")[0])
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        backend = GuardedNetworkBackend(LOOPBACK, resolver=_loopback)
        stream = await backend.connect_tcp("r.test", port, timeout=5, local_address="127.0.0.3",
                                           socket_options=[(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)])
        sock = stream.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        await stream.aclose()
        for _ in range(100):
            if peers:
                break
            await asyncio.sleep(0.02)
        assert peers == ["127.0.0.3"]
    finally:
        server.close()
        await server.wait_closed()


async def raw_server(answer: bytes):
    import asyncio

    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_transport_hands_back_reason_phrase_and_http_version():
    server, port = await raw_server(b"HTTP/1.0 203 Fine By Me\r\nContent-Length: 2\r\n\r\nok")
    transport = GuardedTransport(LOOPBACK, resolver=_loopback)
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(f"http://r.test:{port}/")
        assert (response.status_code, response.reason_phrase, response.http_version, response.text) == (203, "Fine By Me", "HTTP/1.0", "ok")
    finally:
        await transport.aclose()
        server.close()


async def test_errors_reading_the_body_are_httpx_errors_naming_the_request():
    server, port = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-ten-b")
    transport = GuardedTransport(LOOPBACK, resolver=_loopback)
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.HTTPError) as info:
                await client.get(f"http://r.test:{port}/body")
        assert str(info.value.request.url) == f"http://r.test:{port}/body"
        from support import free_port

        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get(f"http://r.test:{free_port()}/dead")
        assert info.value.request.url.path == "/dead"
    finally:
        await transport.aclose()
        server.close()


async def test_request_timeouts_reach_the_connection(receiver):
    receiver.handler = lambda received: receiver.reply(200, b"late", delay=3)
    transport = GuardedTransport(LOOPBACK, resolver=_loopback)
    try:
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, read=0.3)) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(receiver.url("/slow", host="r.test"))
    finally:
        await transport.aclose()


async def test_max_connections_bounds_the_pool_and_closed_responses_free_it(receiver):
    transport = GuardedTransport(LOOPBACK, resolver=_loopback, max_connections=1)
    try:
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, pool=0.3)) as client:
            for _ in range(3):  # each closed response gives its connection back
                assert (await client.get(receiver.url("/a", host="r.test"))).status_code == 200
            async with client.stream("GET", receiver.url("/held", host="r.test")) as held:
                assert held.status_code == 200
                with pytest.raises(httpx.PoolTimeout):
                    await client.get(receiver.url("/b", host="r.test"))
    finally:
        await transport.aclose()


async def test_the_given_tls_context_is_the_one_used(mtls_receiver, pki):
    import ssl

    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key), password=pki.client_key_password)
    transport = GuardedTransport(LOOPBACK, ssl_context=context, resolver=_loopback)
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(mtls_receiver.url("/tls", host="localhost"))
        assert response.status_code == 200
    finally:
        await transport.aclose()


async def test_the_transport_itself_names_the_request_in_its_errors():
    """Called directly (httpx's client would fill a missing request in on its own)."""
    from support import free_port

    server, port = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-ten-b")
    transport = GuardedTransport(LOOPBACK, resolver=_loopback)
    try:
        request = httpx.Request("GET", f"http://r.test:{port}/body")
        response = await transport.handle_async_request(request)
        with pytest.raises(httpx.HTTPError) as info:
            async for _ in response.stream:
                pass
        assert info.value.request is request
        await response.aclose()
        dead = httpx.Request("GET", f"http://r.test:{free_port()}/dead")
        with pytest.raises(httpx.ConnectError) as info:
            await transport.handle_async_request(dead)
        assert info.value.request is dead
    finally:
        await transport.aclose()
        server.close()


async def test_backend_honours_the_connect_timeout(counter):
    backend = GuardedNetworkBackend(LOOPBACK, resolver=_loopback)
    with pytest.raises(httpcore.ConnectTimeout):
        await backend.connect_tcp("r.test", counter.port, timeout=0)
