"""The public origin a provider called, from the ASGI scope: Host, the listening socket when
there is no Host, and X-Forwarded-* only from trusted proxies (IPv4-mapped peers included)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from starlette.requests import Request

from gateway.api.urls import TrustedPeers, _peer_in, called_url, public_origin

PROXIES = [ipaddress.ip_network("10.0.0.0/8")]


def _request(headers: dict[str, str], *, client: str = "203.0.113.9", scheme: str = "http",
             server: tuple[str, int] | None = ("127.0.0.1", 8000)) -> Request:
    scope: dict[str, Any] = {
        "type": "http", "method": "POST", "scheme": scheme, "path": "/api/v1/x", "raw_path": b"/api/v1/x",
        "query_string": b"a=1", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": (client, 5000), "server": server,
    }
    return Request(scope)


def test_host_header_and_scheme() -> None:
    request = _request({"Host": "gw.example.com:8443"}, scheme="https")
    assert public_origin(request, None, PROXIES) == "https://gw.example.com:8443"
    assert called_url(request, "https://gw.example.com:8443") == "https://gw.example.com:8443/api/v1/x?a=1"


@pytest.mark.parametrize("server, origin", [(("127.0.0.1", 8000), "http://127.0.0.1:8000"),
                                            (("::1", 9000), "http://[::1]:9000"),
                                            (("gw.local", None), "http://gw.local")])
def test_without_host_the_listening_socket(server: tuple[str, Any], origin: str) -> None:
    assert public_origin(_request({}, server=server), None, PROXIES) == origin


@pytest.mark.parametrize("client, trusted", [("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("203.0.113.9", False), ("not-an-ip", False)])
def test_forwarded_headers_only_from_trusted_proxies(client: str, trusted: bool) -> None:
    request = _request({"Host": "127.0.0.1:8000", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com"}, client=client)
    expected = "https://gw.example.com" if trusted else "http://127.0.0.1:8000"
    assert public_origin(request, None, PROXIES) == expected
    assert public_origin(request, None, []) == "http://127.0.0.1:8000"  # no trusted proxies: never


def test_configured_public_url_wins() -> None:
    assert public_origin(_request({"Host": "x"}), "https://public.example.com", PROXIES) == "https://public.example.com"
    assert public_origin(_request({"Host": "x"}), "auto", PROXIES, tunnel_origin="https://t.trycloudflare.com") == "https://t.trycloudflare.com"


@pytest.mark.parametrize("peer", ["10.1.2.3", "203.0.113.9", "::ffff:10.0.0.7", "::1", "not-an-address", ""])
def test_trusted_peers_answer_as_the_networks_do_and_keep_the_answer(peer: str) -> None:
    peers = TrustedPeers(PROXIES)
    want = bool(peer) and _peer_in(peer, tuple(PROXIES))
    assert (peer in peers) is want and (peer in peers) is want  # the second answer comes from the cache
    assert list(peers) == PROXIES
    assert ("10.1.2.3" in TrustedPeers([])) is False


def test_trusted_peers_forget_rather_than_grow_without_bound() -> None:
    peers = TrustedPeers(PROXIES)
    for n in range(5000):
        assert f"198.51.{n // 256 % 256}.{n % 256}" not in peers
    assert len(peers._known) <= 4096
    assert "10.0.0.1" in peers


def test_public_origin_takes_trusted_peers_as_well_as_a_list() -> None:
    request = _request({"Host": "internal:8000", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com"},
                       client="10.9.9.9")
    assert public_origin(request, None, TrustedPeers(PROXIES)) == public_origin(request, None, PROXIES) == "https://gw.example.com"
