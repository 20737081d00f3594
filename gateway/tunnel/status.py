"""What the gateway knows about its tunnel, and how it describes that to a person. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Sighting:
    """One lookup that found the tunnel's hostname."""

    hostname: str
    source: str  # "quicktunnel" | "metrics" | "log"
    address: str  # the metrics server's host:port, or the log file's path
    ready_connections: int | None = None
    connector_id: str | None = None


@dataclass(frozen=True)
class TunnelStatus:
    """The cached answer: the last hostname found, and how the latest lookup went.

    A hostname stays (marked `stale`) while lookups fail, until another one is found.
    """

    sighting: Sighting | None = None
    found_at: float | None = None  # when this hostname was first seen
    checked_at: float | None = None  # when the latest lookup finished
    error: str | None = None  # why the latest lookup found nothing
    lookups: int = 0

    @property
    def hostname(self) -> str | None:
        return self.sighting.hostname if self.sighting else None

    @property
    def origin(self) -> str | None:
        """`https://<hostname>`: the base of every URL handed to a provider."""
        return f"https://{self.sighting.hostname}" if self.sighting else None

    @property
    def stale(self) -> bool:
        return self.sighting is not None and self.error is not None

    def after_lookup(self, found: Sighting | None, error: str | None, now: float) -> TunnelStatus:
        """The status once a lookup has found `found` (or failed with `error`) at `now`."""
        if found is None:
            return TunnelStatus(self.sighting, self.found_at, now, error or "not found", self.lookups + 1)
        same = self.sighting is not None and self.sighting.hostname == found.hostname
        return TunnelStatus(found, self.found_at if same else now, now, None, self.lookups + 1)

    def to_dict(self) -> dict[str, Any]:
        sighting = self.sighting
        return {
            "found": sighting is not None,
            "hostname": self.hostname,
            "source": sighting.source if sighting else None,
            "address": sighting.address if sighting else None,
            "ready_connections": sighting.ready_connections if sighting else None,
            "connector_id": sighting.connector_id if sighting else None,
            "stale": self.stale,
            "found_at": _iso(self.found_at),
            "checked_at": _iso(self.checked_at),
            "error": self.error,
        }


def describe(public_url: str | None, status: TunnelStatus | None, origin: str, searched: list[str]) -> dict[str, Any]:
    """The body of `GET /api/v1/tunnel`: which origin providers are given, and why.

    `origin` is what the gateway uses for the asking request; `searched` names where it looked.
    """
    ws_origin = origin.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    body: dict[str, Any] = {"public_url": public_url, "origin": origin, "websocket_origin": ws_origin}
    if public_url not in (None, "auto"):
        return {
            **body,
            "mode": "fixed",
            "tunnel": None,
            "detail": f"public_url is set to {public_url}; no tunnel is looked for (set public_url: auto to detect one)",
        }
    if public_url is None or status is None:
        return {
            **body,
            "mode": "request",
            "tunnel": None,
            "detail": "public_url is not set: every URL handed to a provider uses the host of the request "
            "that asked (set public_url: auto to use a cloudflared quick tunnel)",
        }
    tunnel = {**status.to_dict(), "searched": list(searched)}
    if status.sighting is None:
        detail = (
            f"no cloudflared tunnel found ({status.error or 'not looked for yet'}). Until one is, URLs handed "
            "to providers use the host of the request that asked; start a tunnel with `make tunnel` "
            "(or `gateway tunnel`)"
        )
        return {**body, "mode": "request", "tunnel": tunnel, "detail": detail}
    detail = f"using the tunnel https://{status.hostname} (from {status.sighting.source} at {status.sighting.address})"
    if status.stale:
        detail += f"; the latest lookup failed ({status.error}), so this hostname may be out of date"
    return {**body, "mode": "tunnel", "tunnel": tunnel, "detail": detail}
