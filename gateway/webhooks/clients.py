"""HTTP clients for webhook endpoints, each behind the SSRF guard.

Webhook requests go out through `Http1Pool`: keep-alive HTTP/1.1 connections on asyncio
streams, one pool per subscription, keyed by its name, its `allow_networks` and its client
certificate, so connections are reused across deliveries while a changed configuration gets a
new pool. Every new connection resolves the host and vets every address with the SSRF guard
(`resolve_destination`) and then connects to the vetted address itself, with the URL's name as
Host, TLS SNI and certificate name. Nothing follows redirects and no proxy is ever used. It is
a small client on purpose: on the delivery path httpx + httpcore cost ~15x the CPU of the
request itself, and that capped deliveries per second (see bench/webhooks.py).

The pools' httpx clients (same guard, same keys) remain for the OAuth2 token requests, which
are rare. The OAuth2 token cache lives here too, since it shares the clients' lifetime.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import httpcore
import httpx

if importlib.util.find_spec("sniffio") is None:
    # httpcore runs `import sniffio` several times per request; when sniffio is not installed
    # each failed import walks sys.path with stat() calls (a quarter of the delivery worker's
    # CPU under load). A None entry makes that import fail at once, as ModuleNotFoundError,
    # which httpcore and anyio already treat as "asyncio, no sniffio".
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

import contextlib

from gateway.webhooks.auth import ClientCertificate, OAuth2TokenCache, ssl_context_for
from gateway.webhooks.ssrf import GuardedTransport, Network, Resolver, resolve_destination, system_resolve
from gateway.webhooks.subscription import Subscription

USER_AGENT = "telephony-gateway-webhooks/0.1"
_closing: set[asyncio.Task[None]] = set()  # released pools being closed (a reference keeps each task alive)
MAX_CONNECTIONS = 20  # per subscription, as httpcore's pool had
KEEPALIVE_EXPIRY = 30.0  # seconds an idle connection is kept
_DEFAULT_HEADERS = (
    ("Accept", "*/*"),
    ("Accept-Encoding", "identity"),
    ("Connection", "keep-alive"),
    ("User-Agent", USER_AGENT),
)
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True)
class Answer:
    """A response: status, headers (lower-case names; the last value of a repeated one) and
    the body, cut at `max_body` bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # for DNS, TLS SNI and the certificate check (IPv6 without brackets)
    port: int
    netloc: str  # the Host header
    target: bytes  # path and query, as they go on the request line


@lru_cache(maxsize=1)
def _default_tls() -> ssl.SSLContext:
    """The TLS client context of endpoints without a client certificate (certifi's CAs)."""
    return ssl_context_for(None)


@lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{parsed.scheme}://'.")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return _Target(parsed.scheme, parsed.raw_host.decode("ascii"), port, parsed.netloc.decode("ascii"), parsed.raw_path)


class _Connection:
    __slots__ = ("idle_since", "origin", "reader", "writer")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: tuple[str, str, int]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.origin = origin
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and self.reader.exception() is None
            and now - self.idle_since < KEEPALIVE_EXPIRY
        )

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class Http1Pool:
    """Keep-alive HTTP/1.1 connections for one subscription, every one behind the SSRF guard.
    `ssl_context` None: the default context (`_default_tls`), made at the first https connection.

    `request` sends one request and reads the whole answer (the body cut at `max_body`); the
    caller bounds it in time (`asyncio.timeout`), and a connection interrupted in any way is
    closed, never reused. At most `max_connections` requests run at once; idle connections are
    kept `KEEPALIVE_EXPIRY` seconds. Errors: `DestinationRefused` (the guard), httpx's
    `ConnectError` / `RemoteProtocolError` / `UnsupportedProtocol`, `OSError`, `TimeoutError`.
    """

    def __init__(
        self,
        allow_networks: tuple[Network, ...],
        ssl_context: ssl.SSLContext | None,
        *,
        resolver: Resolver = system_resolve,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._allow = allow_networks
        self._ssl = ssl_context
        self._resolver = resolver
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_connections
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes, *, max_body: int) -> Answer:
        target = _target(url)
        head = self._head(method, target, headers, body)
        async with self._slots:
            conn = self._take_idle((target.scheme, target.host, target.port))
            if conn is None:
                conn = await self._connect(target)
            try:
                if len(body) < 65536:
                    conn.writer.write(head + body)  # one segment for the usual small request
                else:
                    conn.writer.write(head)
                    conn.writer.write(body)
                await conn.writer.drain()
                answer, reusable = await self._read_answer(conn.reader, method, max_body)
            except BaseException:
                conn.close()
                raise
            if reusable and not self._closed:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
                if len(self._idle) > self._max_idle:
                    self._idle.pop(0).close()
            else:
                conn.close()
            return answer

    @staticmethod
    def _head(method: str, target: _Target, headers: Mapping[str, str], body: bytes) -> bytes:
        merged: dict[str, tuple[str, str]] = {name.lower(): (name, value) for name, value in _DEFAULT_HEADERS}
        host = target.netloc
        for name, value in headers.items():
            lower = name.lower()
            if lower == "host":
                host = value
            elif lower not in _OWN_HEADERS:
                merged[lower] = (name, value)
        lines = [f"{method} {target.target.decode('ascii')} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in merged.values()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        try:
            return "\r\n".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            raise httpx.LocalProtocolError("a header value is not Latin-1 text") from None

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        now = time.monotonic()
        found = None
        for conn in reversed(self._idle):  # the most recently used first
            if conn.origin == origin:
                found = conn
                break
        kept = []
        for conn in self._idle:
            if conn is found:
                continue
            if conn.usable(now):
                kept.append(conn)
            else:
                conn.close()
        self._idle = kept
        if found is not None and not found.usable(now):
            found.close()
            return None
        return found

    async def _connect(self, target: _Target) -> _Connection:
        try:
            addresses = await resolve_destination(target.host, target.port, self._allow, self._resolver)
        except httpcore.ConnectError as error:
            raise httpx.ConnectError(str(error)) from None
        secure = target.scheme == "https"
        last: Exception | None = None
        for address in addresses:
            try:
                reader, writer = await asyncio.open_connection(
                    address,
                    target.port,
                    ssl=(self._ssl or _default_tls()) if secure else None,
                    server_hostname=target.host if secure else None,
                    limit=256 * 1024,
                )
            except OSError as error:
                last = error
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _Connection(reader, writer, (target.scheme, target.host, target.port))
        raise httpx.ConnectError(str(last) or type(last).__name__)

    @staticmethod
    async def _read_answer(reader: asyncio.StreamReader, method: str, max_body: int) -> tuple[Answer, bool]:
        head = b""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].decode("latin-1").split("\r\n")
                version, _, rest = lines[0].partition(" ")
                if not version.startswith("HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
                    raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}")
                status = int(rest[:3])
                if not 100 <= status < 200 or status == 101:
                    break  # 1xx interim answers are skipped
            headers: dict[str, str] = {}
            connection: list[str] = []
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if not colon:
                    raise httpx.RemoteProtocolError("malformed header line")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = value
                if name == "connection":
                    connection.append(value.lower())
            reusable = version == "HTTP/1.1" and not any("close" in c for c in connection)
            if method == "HEAD" or status in _NO_BODY_STATUSES or 100 <= status < 200:
                return Answer(status, headers, b""), reusable
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body, complete = await _read_chunked(reader, max_body)
                return Answer(status, headers, body), reusable and complete
            length = headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    raise httpx.RemoteProtocolError("malformed Content-Length")
                size = int(length)
                body = await reader.readexactly(min(size, max_body))
                return Answer(status, headers, body), reusable and size <= max_body
            chunks, size = [], 0  # delimited by the end of the connection
            while size < max_body:
                chunk = await reader.read(max_body - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return Answer(status, headers, b"".join(chunks)), False
        except asyncio.IncompleteReadError as error:
            if not error.partial and not head:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from None
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body") from None
        except (asyncio.LimitOverrunError, ValueError) as error:
            raise httpx.RemoteProtocolError(f"malformed response: {type(error).__name__}") from None

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> tuple[bytes, bool]:
    """A chunked body, cut at `max_body`; (body, whether it was read to its end)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        length = int(line.split(b";", 1)[0].strip(), 16)
        if length == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(chunks), True
        if size + length > max_body:
            chunks.append(await reader.readexactly(max_body - size))
            return b"".join(chunks), False
        chunks.append(await reader.readexactly(length))
        size += length
        await reader.readexactly(2)


class EndpointClients:
    """Long-lived connection pools (and httpx clients, for OAuth2 tokens) for webhook
    endpoints; close with `aclose()`."""

    def __init__(
        self,
        *,
        tokens: OAuth2TokenCache | None = None,
        resolver: Resolver = system_resolve,
    ) -> None:
        self.tokens = tokens or OAuth2TokenCache()
        self._resolver = resolver
        self._clients: dict[str, tuple[tuple[object, ...], httpx.AsyncClient]] = {}
        self._retired: list[httpx.AsyncClient] = []
        self._pools: dict[str, tuple[tuple[object, ...], Http1Pool, Subscription, ClientCertificate | None]] = {}
        self._retired_pools: list[Http1Pool] = []

    def pool_for(self, subscription: Subscription, certificate: ClientCertificate | None = None) -> Http1Pool:
        """The endpoint's connection pool, created on first use; AuthError when mTLS files are unusable."""
        current = self._pools.get(subscription.name)
        if current is not None and current[2] is subscription and current[3] == certificate:
            return current[1]  # the same configuration object as last time: its key is the same
        key = (tuple(str(n) for n in subscription.allow_networks), certificate)
        if current is not None and current[0] == key:
            self._pools[subscription.name] = (key, current[1], subscription, certificate)
            return current[1]
        if current is not None:
            self._retired_pools.append(current[1])
        # Without a client certificate, the default TLS context: made at the first https connection
        # (loading the CA bundle took ~35 ms, on the first delivery of every endpoint).
        tls = ssl_context_for(certificate) if certificate is not None else None
        pool = Http1Pool(tuple(subscription.allow_networks), tls, resolver=self._resolver)
        self._pools[subscription.name] = (key, pool, subscription, certificate)
        return pool

    def client_for(self, subscription: Subscription, certificate: ClientCertificate | None = None) -> httpx.AsyncClient:
        """The endpoint's client, created on first use; AuthError when mTLS files are unusable."""
        key = (tuple(str(n) for n in subscription.allow_networks), certificate)
        current = self._clients.get(subscription.name)
        if current is not None and current[0] == key:
            return current[1]
        if current is not None:
            self._retired.append(current[1])
        transport = GuardedTransport(
            subscription.allow_networks,
            ssl_context=ssl_context_for(certificate),
            resolver=self._resolver,
        )
        client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )
        self._clients[subscription.name] = (key, client)
        return client

    def release(self, name: str) -> None:
        """Forget subscription `name`'s pool and client (it is no longer delivered to); they are
        closed in the background."""
        client = self._clients.pop(name, None)
        entry = self._pools.pop(name, None)
        if client is None and entry is None:
            return

        async def close() -> None:
            if client is not None:
                await client[1].aclose()
            if entry is not None:
                await entry[1].aclose()

        try:
            task = asyncio.get_running_loop().create_task(close())
        except RuntimeError:  # no loop: nothing was opened on one
            return
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def aclose(self) -> None:
        """Close every client."""
        clients = [client for _key, client in self._clients.values()] + self._retired
        pools = [entry[1] for entry in self._pools.values()] + self._retired_pools
        self._clients.clear()
        self._retired.clear()
        self._pools.clear()
        self._retired_pools.clear()
        for client in clients:
            await client.aclose()
        for pool in pools:
            await pool.aclose()
