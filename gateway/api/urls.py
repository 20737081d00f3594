"""The public URLs the gateway is reached at: for signature checks and for answers.

A provider signs the URL it called. Behind a proxy or tunnel the app sees another scheme or
host, so the public origin comes from `public_url` when set (`auto`: the cloudflared tunnel
the detector found), else from the request, with `X-Forwarded-Proto`/`X-Forwarded-Host`
honoured only from `trusted_proxies`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection
from starlette.types import Scope

from gateway.api.scope import headers_of

if TYPE_CHECKING:
    from gateway.api.context import GatewayContext

_WS_SCHEME = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}
_HTTP_SCHEME = {"wss": "https", "ws": "http", "https": "https", "http": "http"}


class TrustedPeers:
    """The peers that may set `X-Forwarded-*` (`trusted_proxies`): the one test of that, for the
    public URL and the client address alike. Each address's answer is kept: the same few peers
    call again and again, and testing one costs ipaddress parsing."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self.networks = tuple(networks)
        self._known: dict[object, bool] = {}

    @classmethod
    def of(cls, trusted: TrustedPeers | Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> TrustedPeers:
        """`trusted` itself, or its networks as `TrustedPeers`."""
        return trusted if isinstance(trusted, TrustedPeers) else cls(trusted)

    def __contains__(self, peer: object) -> bool:
        found = self._known.get(peer)
        if found is None:
            found = bool(self.networks) and isinstance(peer, str) and bool(peer) and _peer_in(peer, self.networks)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[peer] = found
        return found

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.networks)


def _peer_in(peer: str, proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether `peer` is inside one of `proxies` (IPv4-mapped IPv6 addresses as their IPv4)."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in proxies)


def public_origin(
    conn: HTTPConnection,
    public_url: str | None,
    trusted_proxies: TrustedPeers | Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
    *,
    tunnel_origin: str | None = None,
) -> str:
    """`scheme://host[:port][/prefix]` (http/https) the caller used to reach the gateway.

    `tunnel_origin` is the detected tunnel's `https://host`, used when `public_url` is `auto`.
    """
    if public_url and public_url != "auto":
        return public_url
    if public_url == "auto" and tunnel_origin:
        return tunnel_origin
    scope = conn.scope
    scheme = _HTTP_SCHEME.get(scope.get("scheme", "http"), "http")
    headers = headers_of(scope)
    host = headers.get("host") or _server_host(scope)
    peer = (scope.get("client") or (None,))[0]
    if peer in TrustedPeers.of(trusted_proxies):
        forwarded_proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        forwarded_host = headers.get("x-forwarded-host", "").split(",")[0].strip()
        if forwarded_proto in ("http", "https"):
            scheme = forwarded_proto
        if forwarded_host:
            host = forwarded_host
    return f"{scheme}://{host}"


def _server_host(scope: Scope) -> str:
    """`host:port` of the listening socket, for a request without a Host header."""
    server = scope.get("server") or ("localhost", None)
    host, port = server[0], server[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def gateway_origin(conn: HTTPConnection, ctx: GatewayContext) -> str:
    """`public_origin` under this gateway's settings, `auto` resolved by its tunnel detector."""
    tunnel = ctx.tunnel.origin() if ctx.tunnel is not None else None
    return public_origin(conn, ctx.config.public_url, ctx.trusted_peers, tunnel_origin=tunnel)


def as_websocket(origin: str) -> str:
    """The ws:// or wss:// form of an http(s) origin."""
    scheme, rest = origin.split("://", 1)
    return f"{_WS_SCHEME[scheme]}://{rest}"


def called_url(conn: HTTPConnection, origin: str) -> str:
    """The full URL the provider called: public origin + raw path + raw query, as sent."""
    raw_path = conn.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else conn.scope["path"]
    path = path.split("?", 1)[0]
    if conn.scope.get("type") == "websocket":
        origin = as_websocket(origin)
    query = conn.scope.get("query_string", b"").decode("latin-1")
    return f"{origin}{path}?{query}" if query else f"{origin}{path}"
