"""Finds the public hostname of a cloudflared quick tunnel, and keeps it up to date.

The I/O edge of `gateway.tunnel`: it asks cloudflared's metrics server(s) (`/quicktunnel`,
then `/metrics`), then reads the tail of cloudflared's log file, and caches what it found.
A background task looks again every `refresh_seconds`, sooner (from `retry_seconds`,
doubling) while lookups fail, and at once when nudged, so a restarted cloudflared's new
hostname replaces the old one. Reading the cache never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import httpx

from gateway.dial.urls import log_console_urls
from gateway.tunnel import cloudflared
from gateway.tunnel.cloudflared import NotQuickTunnel
from gateway.tunnel.status import Sighting, TunnelStatus

log = logging.getLogger("gateway.tunnel")

LOG_TAIL_BYTES = 256 * 1024
_MIN_GAP = 1.0  # seconds between lookups, however often the detector is nudged


class _Unreachable(Exception):
    """No metrics server answered at an address."""


def _read_tail(path: str, limit: int = LOG_TAIL_BYTES) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - limit))
        return handle.read().decode("utf-8", errors="replace")


def _why(exc: httpx.TransportError) -> str:
    """A short reason for people: refused, unknown host, timed out."""
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        cause = cause.__cause__ or cause.__context__
    return "cannot connect" if isinstance(exc, httpx.ConnectError) else exc.__class__.__name__


class TunnelDetector:
    """The cached tunnel hostname of `public_url: auto`, refreshed in the background."""

    def __init__(
        self,
        metrics: Sequence[str] = cloudflared.DEFAULT_METRICS,
        *,
        log_file: str | None = None,
        refresh_seconds: float = 15.0,
        retry_seconds: float = 1.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.addresses = list(metrics) or list(cloudflared.DEFAULT_METRICS)
        self.log_file = log_file
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = min(retry_seconds, refresh_seconds)
        self.timeout = timeout
        self.clock = clock
        self._status = TunnelStatus()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_address: str | None = None

    @property
    def status(self) -> TunnelStatus:
        return self._status

    def origin(self) -> str | None:
        """`https://<hostname>` of the tunnel last found, or None: never blocks."""
        return self._status.origin

    def searched(self) -> list[str]:
        """Where lookups go, for people: the metrics servers, then the log file."""
        return [f"http://{a}" if "://" not in a else a for a in self.addresses] + (
            [self.log_file] if self.log_file else []
        )

    def nudge(self) -> None:
        """Ask the background task to look again now (a provider request did not match)."""
        self._wake.set()

    async def start(self) -> None:
        """Look once (waiting at most `timeout` seconds), then keep looking in the background."""
        self._client = httpx.AsyncClient(timeout=self.timeout, trust_env=False, follow_redirects=False)
        first = asyncio.ensure_future(self.refresh())
        try:
            await asyncio.wait_for(asyncio.shield(first), self.timeout)
        except TimeoutError:
            pass  # the first lookup goes on in the background; start-up does not wait for it
        except Exception:  # never let a lookup stop the gateway from starting
            log.exception("tunnel lookup failed unexpectedly")
        self._task = asyncio.create_task(self._run(first), name="tunnel-detector")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def refresh(self) -> TunnelStatus:
        """Look now and update the cache; callers arriving during a lookup share its result."""
        seen = self._status.lookups
        async with self._lock:
            if self._status.lookups != seen:
                return self._status
            found, error = await self._look()
            before = self._status
            self._status = before.after_lookup(found, error, self.clock())
            self._report(before, self._status)
            return self._status

    async def _run(self, first: asyncio.Future[TunnelStatus]) -> None:
        with contextlib.suppress(Exception):
            await first
        failures = 0
        while True:
            if self._status.sighting is not None and self._status.error is None:
                failures, wait = 0, self.refresh_seconds
            else:
                wait = min(self.retry_seconds * 2**failures, self.refresh_seconds)
                failures = min(failures + 1, 32)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
                failures = 0  # nudged: a provider request suggests the tunnel moved
            gap = _MIN_GAP - (self.clock() - (self._status.checked_at or 0))
            if gap > 0:
                await asyncio.sleep(gap)
            try:
                await self.refresh()
            except Exception:  # a bug here must not end the loop; the cache keeps its answer
                log.exception("tunnel lookup failed unexpectedly")

    def _report(self, before: TunnelStatus, after: TunnelStatus) -> None:
        if after.sighting is not None and after.error is None:
            if before.hostname is None:
                log.info(
                    "tunnel found: https://%s (from %s at %s); providers get https:// and wss:// URLs on it",
                    after.hostname,
                    after.sighting.source,
                    after.sighting.address,
                )
                log_console_urls(log, f"https://{after.hostname}")
            elif before.hostname != after.hostname:
                log.warning(
                    "tunnel hostname changed: https://%s -> https://%s (cloudflared restarted?); "
                    "update any provider console URLs that name the old one",
                    before.hostname,
                    after.hostname,
                )
                log_console_urls(log, f"https://{after.hostname}")
            elif before.error is not None:
                log.info("tunnel https://%s answers again", after.hostname)
        elif before.error is None:
            if after.sighting is not None:
                log.warning(
                    "tunnel lookup failed (%s); still using https://%s until it answers", after.error, after.hostname
                )
            else:
                log.warning(
                    "public_url is auto but no cloudflared tunnel was found (%s); "
                    "URLs handed to providers use each request's own host",
                    after.error,
                )

    async def _look(self) -> tuple[Sighting | None, str | None]:
        """One lookup: every metrics server (the last good one first), then the log file."""
        problems: list[str] = []
        ordered = sorted(self.addresses, key=lambda a: a != self._last_address)
        for address in ordered:
            try:
                sighting = await self._ask(address)
            except _Unreachable as exc:
                problems.append(f"{address}: {exc}")
                continue
            except NotQuickTunnel as exc:
                problems.append(f"{address}: {exc}")
                continue
            self._last_address = address
            return sighting, None
        if self.log_file:
            try:
                text = await asyncio.to_thread(_read_tail, self.log_file)
                return Sighting(cloudflared.hostname_from_log(text), "log", self.log_file), None
            except OSError as exc:
                problems.append(f"{self.log_file}: {exc.strerror or exc}")
            except NotQuickTunnel as exc:
                problems.append(f"{self.log_file}: {exc}")
        return None, _summary(problems)

    async def _get(self, address: str, path: str) -> httpx.Response:
        client = self._client
        if client is None:  # a lookup outside start()/stop(), e.g. from the CLI
            async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as once:
                return await self._send(once, address, path)
        return await self._send(client, address, path)

    @staticmethod
    async def _send(client: httpx.AsyncClient, address: str, path: str) -> httpx.Response:
        try:
            return await client.get(cloudflared.metrics_url(address, path))
        except httpx.TransportError as exc:
            raise _Unreachable(_why(exc)) from None
        except httpx.InvalidURL:
            raise _Unreachable("not a host:port") from None

    async def _ask(self, address: str) -> Sighting:
        """`/quicktunnel`, else `/metrics`, at one metrics server; `/ready` adds readiness."""
        answer = await self._get(address, "/quicktunnel")
        try:
            if answer.status_code != 200:
                raise NotQuickTunnel(f"/quicktunnel answered {answer.status_code}")
            hostname, source = cloudflared.hostname_from_quicktunnel(answer.content), "quicktunnel"
        except NotQuickTunnel as first:
            metrics = await self._get(address, "/metrics")
            if metrics.status_code != 200:
                raise NotQuickTunnel(f"{first}; /metrics answered {metrics.status_code}") from None
            try:
                hostname, source = cloudflared.hostname_from_metrics(metrics.text), "metrics"
            except NotQuickTunnel as second:
                raise NotQuickTunnel(f"{first}; {second}") from None
        ready_connections = connector_id = None
        with contextlib.suppress(_Unreachable):
            ready = await self._get(address, "/ready")
            ready_connections, connector_id = cloudflared.readiness(ready.content)
        return Sighting(hostname, source, address, ready_connections, connector_id)


def _summary(problems: list[str]) -> str:
    """One line for many addresses: identical reasons are told once."""
    if not problems:
        return "nowhere to look"
    reasons = {p.split(": ", 1)[-1] for p in problems}
    if len(reasons) == 1:
        return f"{reasons.pop()} at {', '.join(p.split(': ', 1)[0] for p in problems)}"
    return "; ".join(problems)


class TunnelSettings(Protocol):
    """What `detector_for` reads: the shape of `gateway.config.TunnelConfig` (read-only)."""

    @property
    def metrics(self) -> Sequence[str]: ...
    @property
    def log_file(self) -> str | None: ...
    @property
    def refresh_seconds(self) -> float: ...
    @property
    def retry_seconds(self) -> float: ...
    @property
    def timeout(self) -> float: ...


def detector_for(settings: TunnelSettings) -> TunnelDetector:
    """The detector a `tunnel:` config section describes."""
    return TunnelDetector(
        settings.metrics,
        log_file=settings.log_file,
        refresh_seconds=settings.refresh_seconds,
        retry_seconds=settings.retry_seconds,
        timeout=settings.timeout,
    )
