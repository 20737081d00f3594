"""ASGI middleware at the edge: one log line per request outcome (a route may add what it did
to it with `note_request`), and the per-IP rate limit on provider routes. Pure ASGI (no
per-request Starlette objects)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.urls import TrustedPeers
from gateway.metrics import BODIES_CUT_SHORT, REFUSALS

log = logging.getLogger("gateway.http")

Handler = Callable[[Scope, Receive, Send], Awaitable[int]]
"""A route taken directly: answers the request and returns the status it answered with."""
PROVIDER_PREFIX = "/api/v1/telephony/"
LOG_NOTE = "gateway.log_note"  # scope key: (text, run_id) a route adds to the request's log line
POLICY_VIOLATION = 1008  # the WebSocket close code of a refused media socket


class TokenBucket:
    """Per-key token buckets (pure; the caller passes the clock). Old keys are pruned."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> bool:
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._state[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._state) > self.max_keys:
            full = [k for k, (t, seen) in self._state.items() if t + (now - seen) * self.rate >= self.burst]
            for k in full[: len(self._state) - self.max_keys + 1000]:
                del self._state[k]
        return allowed


def client_ip(scope: Scope, trusted: TrustedPeers | Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The caller's address; the first X-Forwarded-For hop only when the peer is a trusted proxy."""
    peer = (scope.get("client") or ("", 0))[0]
    if peer in TrustedPeers.of(trusted):
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                return value.decode("latin-1").split(",")[0].strip() or peer
    return peer


class EdgeMiddleware:
    """Logs `method path status ms` for every HTTP request; 429s an address's failed provider
    requests over its budget.

    The per-IP bucket is charged only for provider requests that are answered 4xx (failed
    verification, malformed, unknown route) or media sockets closed as policy violations: a
    request that verifies is never refused for rate, however many a provider sends from one
    address. When an address's bucket is empty, its next refusal is answered 429 in place of
    the route's own 4xx (the check costs what verification costs: HMAC, JWT, microseconds).

    `direct(scope)` may name a handler that answers a request itself, ahead of `app` (for the
    app factory: status callbacks, most of what providers send, skip Starlette's stack). Its
    errors are answered 500 and logged here, as Starlette's would be."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        rate: float,
        burst: float,
        trusted: Iterable[Any],
        clock: Callable[[], float] = time.monotonic,
        direct: Callable[[Scope], Handler | None] | None = None,
    ) -> None:
        self.app = app
        self.bucket = TokenBucket(rate, burst) if rate > 0 else None
        self.trusted = TrustedPeers.of(trusted)
        self.clock = clock
        self.direct = direct

    def charge(self, scope: Scope) -> bool:
        """Charge the caller's address for one refused provider request; False when it is over
        its budget (counted, and noted on the request's log line)."""
        assert self.bucket is not None
        ip = client_ip(scope, self.trusted)
        if self.bucket.take(ip, self.clock()):
            return True
        REFUSALS.labels("provider_rate_per_ip").inc()
        note_request(scope, f"rate limited: too many refused provider requests from {ip}", None)
        return False

    def charge_refused_socket(self, scope: Scope) -> None:
        """A provider media socket refused as a policy violation, outside the ASGI app (the lean
        WebSocket layer, `gateway.media.ws_edge`): charged as `_ChargedSocket` charges it."""
        if self.bucket is not None and scope.get("path", "").startswith(PROVIDER_PREFIX):
            self.charge(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limited = self.bucket is not None and path.startswith(PROVIDER_PREFIX)
        if scope["type"] == "websocket":
            await self.app(scope, receive, _ChargedSocket(self, scope, send) if limited else send)
            return
        started = time.perf_counter()
        answer = _Answer(self if limited else None, scope, send)
        handler = self.direct(scope) if self.direct is not None else None
        try:
            if handler is not None:
                try:
                    answer.unsent(await handler(scope, receive, answer))
                except Exception:
                    log.exception("unhandled error on %s %s", scope.get("method"), path)
                    with contextlib.suppress(Exception):  # the answer may have begun: then the connection just ends
                        await _internal_error(answer)
            else:
                await self.app(scope, receive, answer)
        finally:
            self._log(scope, path, answer.status or 500, started)

    @staticmethod
    def _log(scope: Scope, path: str, code: int, started: float) -> None:
        if path not in ("/healthz", "/readyz", "/metrics"):
            text, run_id = scope.get(LOG_NOTE) or ("", None)
            log.info(
                "%s %s %d %.1fms%s",
                scope.get("method"),
                path,
                code,
                (time.perf_counter() - started) * 1000,
                f": {text}" if text else "",
                extra=None if run_id is None else {"run_id": run_id},
            )


class _Answer:
    """The `send` of one HTTP request: keeps the status answered, and with an `edge`, charges a
    4xx to the caller's address, answering 429 instead (and dropping the route's body) when
    the address is over its budget."""

    __slots__ = ("edge", "refused", "scope", "send", "status")

    def __init__(self, edge: EdgeMiddleware | None, scope: Scope, send: Send) -> None:
        self.edge, self.scope, self.send = edge, scope, send
        self.status: int | None = None  # none yet
        self.refused = False

    async def __call__(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            status = message["status"]
            if self._charged(status):
                self.status, self.refused = 429, True
                await _too_many(self.send)
                return
            self.status = status
        await self.send(message)

    def unsent(self, status: int) -> None:
        """A route that answered nothing (its client was gone) but says how it ended: counted
        (and charged) as if it had been sent."""
        if self.status is None:
            self.status = status
            self._charged(status)

    def _charged(self, status: int) -> bool:
        """True when the status is a refusal and the caller's address is over its budget."""
        return 400 <= status < 500 and self.edge is not None and not self.edge.charge(self.scope)


class _ChargedSocket:
    """The `send` of a provider media socket: a policy-violation close (a refused upgrade, no
    valid stream token) is charged to the caller's address; a close for a limit is not."""

    __slots__ = ("edge", "scope", "send")

    def __init__(self, edge: EdgeMiddleware, scope: Scope, send: Send) -> None:
        self.edge, self.scope, self.send = edge, scope, send

    async def __call__(self, message: Message) -> None:
        if message["type"] == "websocket.close" and message.get("code") == POLICY_VIOLATION:
            self.edge.charge(self.scope)
        await self.send(message)


def body_cut_short(scope: Scope) -> int:
    """A client that went away before its whole body arrived (ClientDisconnect): its mistake,
    not the gateway's, so no traceback: counted, noted on the request's one log line; 400."""
    BODIES_CUT_SHORT.inc()
    note_request(scope, "the client went away before its whole body arrived", None)
    return 400


def note_request(scope: Scope, text: str, run_id: str | None) -> None:
    """Add what a route did to the request's one log line (instead of a second line)."""
    scope[LOG_NOTE] = (text, run_id)


async def _internal_error(send: Send) -> None:
    body = b'{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"internal error; the gateway logged the details"}'
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _too_many(send: Send) -> None:
    body = b'{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"too many provider requests from this address"}'
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"retry-after", b"1"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
