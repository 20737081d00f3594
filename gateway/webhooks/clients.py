"""One HTTP client per webhook endpoint, each behind the SSRF guard.

A client is keyed by the subscription's name, its `allow_networks` and its client certificate,
so its connections are reused across deliveries while a changed configuration gets a new one.
Clients never follow redirects and ignore proxy environment variables (a proxy would connect
on the gateway's behalf and so bypass the guard). The OAuth2 token cache lives here too, since
it shares the clients' lifetime.
"""

from __future__ import annotations

import httpx

from gateway.webhooks.auth import ClientCertificate, OAuth2TokenCache, ssl_context_for
from gateway.webhooks.ssrf import GuardedTransport, Resolver, system_resolve
from gateway.webhooks.subscription import Subscription

USER_AGENT = "telephony-gateway-webhooks/0.1"


class EndpointClients:
    """Long-lived httpx clients for webhook endpoints; close with `aclose()`."""

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

    def client_for(
        self, subscription: Subscription, certificate: ClientCertificate | None = None
    ) -> httpx.AsyncClient:
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

    async def aclose(self) -> None:
        """Close every client."""
        clients = [client for _key, client in self._clients.values()] + self._retired
        self._clients.clear()
        self._retired.clear()
        for client in clients:
            await client.aclose()
