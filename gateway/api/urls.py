"""The public URLs the gateway is reached at: for signature checks and for answers.

A provider signs the URL it called. Behind a proxy or tunnel the app sees another scheme or
host, so the public origin comes from `public_url` when set (`auto`: the cloudflared tunnel
the detector found), else from the request, with `X-Forwarded-Proto`/`X-Forwarded-Host`
honoured only from `trusted_proxies`.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING, Iterable

from starlette.requests import HTTPConnection

from gateway.api.scope import headers_of

if TYPE_CHECKING:
    from gateway.api.context import GatewayContext

_WS_SCHEME = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}
_HTTP_SCHEME = {"wss": "https", "ws": "http", "https": "https", "http": "http"}


class TrustedPeers:
    """The peers that may set `X-Forwarded-*` (`trusted_proxies`), each address's answer kept:
    the same few peers call again and again, and testing one costs ipaddress parsing."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self.networks = tuple(networks)
        self._known: dict[str, bool] = {}

    def __contains__(self, peer: object) -> bool:
        found = self._known.get(peer)  # type: ignore[arg-type]
        if found is None:
            found = bool(self.networks) and isinstance(peer, str) and _peer_in(peer, self.networks)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[peer] = found  # type: ignore[index]
        return found

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.networks)


def _trusted(peer: str | None, proxies: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not peer:
        return False
    if isinstance(proxies, TrustedPeers):
        return peer in proxies
    proxies = tuple(proxies)
    return bool(proxies) and _peer_in(peer, proxies)


@functools.lru_cache(maxsize=4096)
def _peer_in(peer: str, proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether `peer` is inside one of `proxies` (cached: the same few peers call again and again)."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in proxies)


def public_origin(conn: HTTPConnection, public_url: str | None, trusted_proxies: Iterable, *,
                  tunnel_origin: str | None = None) -> str:
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
    if _trusted(peer, trusted_proxies):
        forwarded_proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        forwarded_host = headers.get("x-forwarded-host", "").split(",")[0].strip()
        if forwarded_proto in ("http", "https"):
            scheme = forwarded_proto
        if forwarded_host:
            host = forwarded_host
    return f"{scheme}://{host}"


def _server_host(scope: dict) -> str:
    """`host:port` of the listening socket, for a request without a Host header."""
    server = scope.get("server") or ("localhost", None)
    host, port = server[0], server[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def gateway_origin(conn: HTTPConnection, ctx: "GatewayContext") -> str:
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
