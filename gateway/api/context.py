"""What the routes need at run time, built once by the app factory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.api.urls import TrustedPeers
from gateway.calls.live import LiveCalls
from gateway.config import GatewayConfig
from gateway.media.registry import SessionRegistry
from gateway.providers.base import Verdict
from gateway.store.base import Store
from gateway.tunnel import TunnelDetector
from gateway.webhooks.processes import DeliveryProcesses
from gateway.webhooks.worker import DeliveryWorker


@dataclass
class GatewayContext:
    """Config, store and the few process-wide helpers the routes share."""

    config: GatewayConfig
    store: Store
    clock: Callable[[], float] = time.time
    worker: DeliveryWorker | None = None
    delivery_processes: DeliveryProcesses | None = None  # with `delivery.processes`: they send the configured webhooks
    tunnel: TunnelDetector | None = None  # set when public_url is auto
    sessions: SessionRegistry = field(default_factory=SessionRegistry)
    draining: bool = False  # set by the first SIGTERM: readiness false, new calls refused
    live_calls: LiveCalls = field(default_factory=LiveCalls)  # what a drain waits for
    unverified_sockets: int = 0  # media sockets accepted that have not yet presented a valid stream token
    trusted_peers: TrustedPeers = field(init=False)

    def __post_init__(self) -> None:
        self.trusted_peers = TrustedPeers(self.config.trusted_proxies)

    async def unreplayed(self, verdict: Verdict, window_seconds: float) -> Verdict:
        """`verdict` (a verified Vonage JWT) once its `jti` is claimed in the store until its
        `iat` window closes; "replayed token" when any instance claimed it before, restarts
        included. `StoreError` when the store cannot tell."""
        claims = verdict.claims
        expires = datetime.fromtimestamp(float(claims["iat"]) + window_seconds, UTC)
        now = datetime.fromtimestamp(self.clock(), UTC)
        if await self.store.claim_nonce(f"vonage-jti:{claims['jti']}", expires_at=expires, now=now):
            return verdict
        return Verdict(False, "replayed token")

    @property
    def secret_key(self) -> bytes:
        assert self.config.secret_key is not None, "secret_key is filled by with_dev_secrets or the config"
        return self.config.secret_key.get_secret_value().encode()
