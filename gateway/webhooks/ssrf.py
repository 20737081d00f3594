"""The SSRF guard: webhooks only reach public addresses, unless an operator allows a network.

A subscription's URL is written by whoever configures it and may be templated from call data, so
the gateway must not become a way into its own network. Before any connection the host is
resolved (asyncio `getaddrinfo`), and if any of its addresses is not public the destination is
refused with `DestinationRefused`: loopback, private, link-local, CGNAT (100.64/10), reserved,
multicast, unspecified, and those same addresses hidden inside IPv6 (IPv4-mapped `::ffff:a.b.c.d`,
IPv4-compatible `::a.b.c.d`, 6to4 `2002::/16`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`).
A subscription's `allow_networks` lets named CIDRs through.

The connection then goes to the vetted address itself, so a second DNS answer (rebinding) cannot
change where it lands, while the Host header, TLS SNI and certificate check keep the URL's name.
This is done with an httpcore network backend (`GuardedNetworkBackend`) under a small httpx
transport (`GuardedTransport`); httpx 0.28's `AsyncHTTPTransport` takes no network backend, and
httpcore's connection pool does, publicly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from gateway.errors import GatewayError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class DestinationRefused(GatewayError):
    """A webhook destination resolved to an address the gateway will not connect to."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"refused to connect to {host} ({address}): {reason}")
        self.host = host
        self.address = address
        self.reason = reason


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in prefix for prefix in _NAT64) or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _ipv4_problem(address: ipaddress.IPv4Address) -> str | None:
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address in _CGNAT, "shared address space (CGNAT)"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    return next((reason for failed, reason in checks if failed), None)


def address_problem(address: Address) -> str | None:
    """Why `address` is not a public destination, or None when it is."""
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_problem(address)
    inner = embedded_ipv4(address)
    if inner is not None:
        problem = _ipv4_problem(inner)
        return f"{problem} IPv4 {inner} inside IPv6" if problem else None
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_site_local, "site-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    return next((reason for failed, reason in checks if failed), None)


def is_allowed(address: Address, allow_networks: Iterable[Network]) -> bool:
    """Whether `address` (or the IPv4 address inside it) is in one of the allowed networks."""
    candidates: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and (inner := embedded_ipv4(address)) is not None:
        candidates.append(inner)
    return any(
        candidate.version == network.version and candidate in network
        for network in allow_networks
        for candidate in candidates
    )


def vet_address(host: str, address: str, allow_networks: Iterable[Network] = ()) -> Address:
    """The parsed address when it may be reached; raises `DestinationRefused` otherwise."""
    parsed = ipaddress.ip_address(address.split("%", 1)[0])
    networks = tuple(allow_networks)
    if is_allowed(parsed, networks):
        return parsed
    problem = address_problem(parsed)
    if problem:
        raise DestinationRefused(host, str(parsed), f"{problem} address, not in allow_networks")
    return parsed


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the operating system's resolver, in its order, without repeats."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


async def resolve_destination(
    host: str,
    port: int,
    allow_networks: Sequence[Network] = (),
    resolver: Resolver = system_resolve,
) -> list[str]:
    """Every address of `host`, all vetted; refuses the host if any address is not allowed."""
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await resolver(host, port)
        except (OSError, UnicodeError) as error:
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from None
    if not addresses:
        raise httpcore.ConnectError(f"cannot resolve {host}: no addresses")
    for address in addresses:
        vet_address(host, address, allow_networks)
    return addresses


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, vets, and connects to the vetted address."""

    def __init__(
        self,
        allow_networks: Sequence[Network] = (),
        *,
        resolver: Resolver = system_resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow = tuple(allow_networks)
        self._resolver = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first reachable vetted address of `host`."""
        addresses = await resolve_destination(host, port, self._allow, self._resolver)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Unix sockets are never a webhook destination."""
        raise DestinationRefused(path, "unix socket", "unix sockets are not webhook destinations")

    async def sleep(self, seconds: float) -> None:
        """Delegate to the wrapped backend."""
        await self._inner.sleep(seconds)


_ERRORS: tuple[tuple[type[Exception], type[httpx.RequestError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for core_type, httpx_type in _ERRORS:
            if isinstance(error, core_type):
                raise httpx_type(str(error), request=request) from error
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections all pass the SSRF guard (HTTP/1.1, no proxies)."""

    def __init__(
        self,
        allow_networks: Sequence[Network] = (),
        *,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver = system_resolve,
        max_connections: int = 20,
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            network_backend=GuardedNetworkBackend(allow_networks, resolver=resolver),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through the guarded connection pool."""
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._pool.aclose()


def _localhost_addresses() -> list[str]:
    """What `localhost` resolves to here (the hosts file: no network), as the guard will see it."""
    try:
        return list(
            dict.fromkeys(
                str(info[4][0])
                for info in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)
                if info[0] in (socket.AF_INET, socket.AF_INET6)
            )
        )
    except OSError:
        return ["127.0.0.1"]


def configured_destination_problem(
    url: str, allow_networks: Iterable[Network] = (), *, localhost: Callable[[], list[str]] = _localhost_addresses
) -> str | None:
    """Why the guard will refuse `url` whatever DNS says, or None: a literal IP address or a
    `localhost` name (RFC 6761) that is not public and not in `allow_networks`. Other host names
    are resolved and vetted when a request is sent (DNS may answer differently by then); a host
    made from a template is only known then too."""
    from urllib.parse import urlsplit

    if "{{" in url.split("//", 1)[-1].split("/", 1)[0]:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        addresses = localhost()
    else:
        try:
            addresses = [str(ipaddress.ip_address(host.split("%", 1)[0]))]
        except ValueError:
            return None
    networks = tuple(allow_networks)
    for address in addresses:
        try:
            vet_address(host, address, networks)
        except DestinationRefused as refused:
            parsed = ipaddress.ip_address(refused.address)
            suggestion = (
                "127.0.0.0/8" if parsed.version == 4 and parsed.is_loopback else f"{parsed}/{parsed.max_prefixlen}"
            )
            shown = host if host == refused.address else f"{host} ({refused.address})"
            return (
                f"the SSRF guard refuses {shown}: {refused.reason}; if this endpoint is meant to be "
                f"reached, list it: allow_networks: [{suggestion}]"
            )
    return None


async def named_destination_problem(
    url: str, allow_networks: Sequence[Network] = (), *, timeout: float = 3.0, resolver: Resolver = system_resolve
) -> str | None:
    """What the guard would say of `url`'s host name if a request were sent now (DNS answers may
    change by then, so `gateway check-config` reports this as a warning, start-up does not look)."""
    from urllib.parse import urlsplit

    authority = url.split("//", 1)[-1].split("/", 1)[0]
    if "{{" in authority:
        return None
    split = urlsplit(url)
    host = split.hostname
    if not host:
        return None
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return None  # a literal address is judged when the configuration loads
    except ValueError:
        pass
    try:
        port = split.port or (443 if split.scheme == "https" else 80)
        await asyncio.wait_for(resolve_destination(host, port, allow_networks, resolver), timeout)
    except DestinationRefused as refused:
        return f"{host} resolves to {refused.address} now, which the SSRF guard refuses: {refused.reason}"
    except (httpcore.ConnectError, ValueError) as exc:
        return str(exc) or f"cannot resolve {host}"
    except TimeoutError:
        return f"cannot resolve {host}: no answer in {timeout:g} s"
    return None
