"""Wiring the dialing services from the configuration (called by the app factory)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.dial import urls
from gateway.dial.campaigns import CampaignManager
from gateway.dial.dialer import Dialer, NccoFactory
from gateway.dial.inline import InlineRegistry, InlineSettings, SubscriptionHost
from gateway.dial.runner import CampaignRunner, RunnerSettings
from gateway.errors import GatewayError
from gateway.media.token import mint_stream_token
from gateway.providers import vonage
from gateway.providers.plivo_rest import PlivoRest
from gateway.providers.rest import ProviderRest
from gateway.providers.telnyx_rest import TelnyxRest
from gateway.providers.twilio_rest import TwilioRest
from gateway.providers.vonage_rest import PrivateKeyError, VonageRest
from gateway.store.base import Store

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


class DialSetupError(GatewayError, ValueError):
    """A dialing setting that cannot be used; the message names the key."""


@dataclass
class DialServices:
    """What the routes and the lifespan use: the dialer, campaigns and their runner."""

    dialer: Dialer
    campaigns: CampaignManager
    runner: CampaignRunner
    default_provider: str | None = None
    caller_id: dict[str, str] = field(default_factory=dict)

    async def start(self) -> None:
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.dialer.close()


def rest_clients(config: GatewayConfig) -> dict[str, ProviderRest]:
    """A REST client per provider configured for dialing."""
    clients: dict[str, ProviderRest] = {}
    timeout = config.dial.request_timeout
    twilio = config.providers.twilio
    if twilio is not None:
        clients["twilio"] = TwilioRest(
            twilio.account_sid, twilio.auth_token.get_secret_value(), api_base_url=twilio.api_base_url, timeout=timeout
        )
    settings = config.providers.vonage
    if settings is not None and settings.application_id and settings.private_key is not None:
        try:
            clients["vonage"] = VonageRest(
                settings.application_id,
                settings.private_key.get_secret_value(),
                api_base_url=settings.api_base_url,
                timeout=timeout,
            )
        except PrivateKeyError as error:
            raise DialSetupError(f"providers.vonage.private_key: {error}") from None
    telnyx = config.providers.telnyx
    if telnyx is not None and telnyx.api_key is not None and telnyx.account_sid and telnyx.application_id:
        clients["telnyx"] = TelnyxRest(
            telnyx.api_key.get_secret_value(),
            telnyx.account_sid,
            telnyx.application_id,
            api_base_url=telnyx.api_base_url,
            timeout=timeout,
        )
    plivo = config.providers.plivo
    if plivo is not None:
        clients["plivo"] = PlivoRest(
            plivo.auth_id, plivo.auth_token.get_secret_value(), api_base_url=plivo.api_base_url, timeout=timeout
        )
    return clients


def ncco_factory(config: GatewayConfig, secret_key: bytes) -> NccoFactory:
    """The inline NCCO of `dial.vonage_answer: ncco`: the answer webhook's NCCO, made at dial time."""

    def make(origin: str, workflow_id: str, user_id: str, run_id: str) -> list[dict[str, Any]]:
        ws_url = urls.websocket_url(origin, workflow_id, user_id, run_id)
        token = mint_stream_token(
            secret_key, run_id, now=time.time(), ttl=config.stream_token_ttl, workflow_id=workflow_id, user_id=user_id
        )
        headers = {"workflow_id": workflow_id, "user_id": user_id, "workflow_run_id": run_id, "stream_token": token}
        return vonage.render_connect_ncco(
            ws_url, headers, urls.status_url(origin, run_id), allow_insecure=ws_url.startswith("ws://")
        )

    return make


def build_dial_services(
    config: GatewayConfig,
    store: Store,
    worker: SubscriptionHost | None,
    *,
    secret_key: bytes,
    origin: Callable[[], str | None],
    draining: Callable[[], bool] = lambda: False,
) -> DialServices:
    """Everything `POST /api/v1/calls` and the campaigns need, from `config`."""
    dial = config.dial
    dialer = Dialer(
        store,
        rest_clients(config),
        threads=dial.threads,
        ncco_factory=ncco_factory(config, secret_key) if dial.vonage_answer == "ncco" else None,
    )
    registry = InlineRegistry(
        worker,
        InlineSettings(
            secret=dial.webhook_secret.get_secret_value() if dial.webhook_secret else None,
            # an attempt must end before the worker's lease on it does (else it is sent twice)
            timeout=min(dial.webhook_timeout, max(1.0, getattr(worker, "lease_seconds", 60.0) - 30.0)),
            retry=dial.webhook_retry,
            allow_networks=list(dial.webhook_allow_networks),
        ),
    )
    manager = CampaignManager(store, registry)
    runner = CampaignRunner(
        store,
        dialer,
        manager,
        origin=origin,
        draining=draining,
        settings=RunnerSettings(
            poll_seconds=dial.poll_seconds,
            orphan_seconds=dial.orphan_seconds,
            reconcile_seconds=dial.reconcile_seconds,
            max_consecutive_refusals=dial.max_consecutive_refusals,
        ),
    )
    return DialServices(
        dialer=dialer,
        campaigns=manager,
        runner=runner,
        default_provider=dial.default_provider,
        caller_id={provider: number for provider, number in dial.caller_id.items()},
    )
