"""The client address the provider rate limit counts per: X-Forwarded-For only from a trusted
proxy, decided by the same `TrustedPeers` test as the public URL (IPv4-mapped peers included)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from gateway.api.middleware import client_ip
from gateway.api.urls import TrustedPeers

PROXIES = [ipaddress.ip_network("10.0.0.0/8")]


def _scope(peer: Any, forwarded: str | None = "198.51.100.7, 10.0.0.2") -> dict[str, Any]:
    headers = [(b"host", b"gw.example.com")]
    if forwarded is not None:
        headers.append((b"x-forwarded-for", forwarded.encode()))
    return {"type": "http", "client": peer and (peer, 5000), "headers": headers}


@pytest.mark.parametrize("peer, expected", [
    ("10.1.2.3", "198.51.100.7"),         # a trusted proxy: its first hop
    ("::ffff:10.1.2.3", "198.51.100.7"),  # the same proxy, IPv4-mapped, as public_origin trusts it
    ("203.0.113.9", "203.0.113.9"),       # anyone else: the peer itself, whatever it claims
    ("not-an-ip", "not-an-ip"),
    (None, ""),
])
def test_forwarded_for_only_from_trusted_proxies(peer: Any, expected: str) -> None:
    assert client_ip(_scope(peer), PROXIES) == expected
    assert client_ip(_scope(peer), TrustedPeers(PROXIES)) == expected
    assert client_ip(_scope(peer), []) == (peer or "")  # no trusted proxies: never


def test_a_blank_first_hop_counts_as_the_peer() -> None:
    assert client_ip(_scope("10.1.2.3", " , 10.0.0.2"), PROXIES) == "10.1.2.3"
    assert client_ip(_scope("10.1.2.3", None), PROXIES) == "10.1.2.3"
