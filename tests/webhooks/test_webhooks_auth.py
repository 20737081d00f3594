"""Every auth type against a real receiver that checks it; OAuth2 caching; mTLS with a test PKI."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import itertools
import json
import ssl
import time
from urllib.parse import parse_qs

import httpx
import pytest

from gateway.webhooks.auth import HEADER_AUTH_FUNCTIONS, OAuth2TokenCache
from gateway.webhooks.clients import EndpointClients
from gateway.webhooks.policy import Outcome
from gateway.webhooks.sender import RequestBuildError, build_request, send_attempt
from gateway.webhooks.ssrf import GuardedTransport
from gateway.webhooks.subscription import HEADER_AUTH_FUNCTION_NAMES, Subscription

ENVELOPE = {"type": "call.ended", "timestamp": "2026-01-01T00:00:00Z", "data": {"workflow_run_id": "r-9"}}
SECRETS = {
    "API_KEY": "key-7f3a9c",
    "TOKEN": "bearer-55e1d0",
    "PASSWORD": "pass-word-09",
    "CLIENT_SECRET": "client-secret-a1b2",
    "SIGNING_KEY": "hmac-key-33c4",
    "CERT_PASSWORD": "client-key-pass-5b1e",
}


def subscription(url: str, auth: dict, **fields) -> Subscription:
    return Subscription.model_validate(
        {
            "name": "secured",
            "events": ["call.ended"],
            "url": url,
            "auth": auth,
            "signing": {"scheme": "none"},
            "allow_networks": ["127.0.0.0/8"],
            "timeout": 5,
            **fields,
        }
    )


async def deliver(sub: Subscription, clients: EndpointClients, *, message_id: str = "msg_auth", now: float | None = None):
    prepared = build_request(sub, ENVELOPE, {"initial_context": {"tenant": "acme"}}, SECRETS, message_id=message_id, now=now or time.time())
    return await send_attempt(clients, prepared, sub)


def assert_no_secrets(result) -> None:
    text = repr(result)
    for value in SECRETS.values():
        assert value not in text


def require(header: str, expected: str, receiver):
    return lambda received: receiver.reply() if received.headers.get(header) == expected else receiver.reply(401, "{}")


@pytest.mark.parametrize(
    ("auth", "header", "expected"),
    [
        ({"type": "api_key", "value": "{{secret.API_KEY}}"}, "x-api-key", SECRETS["API_KEY"]),
        ({"type": "api_key", "header": "X-Partner-Key", "value": "{{secret.API_KEY}}"}, "x-partner-key", SECRETS["API_KEY"]),
        ({"type": "bearer_token", "token": "{{secret.TOKEN}}"}, "authorization", f"Bearer {SECRETS['TOKEN']}"),
        (
            {"type": "basic_auth", "username": "gateway", "password": "{{secret.PASSWORD}}"},
            "authorization",
            "Basic " + base64.b64encode(f"gateway:{SECRETS['PASSWORD']}".encode()).decode(),
        ),
        (
            {"type": "custom_header", "name": "X-Tenant-Auth", "value": "{{initial_context.tenant}}:{{secret.TOKEN}}"},
            "x-tenant-auth",
            f"acme:{SECRETS['TOKEN']}",
        ),
    ],
)
async def test_static_auth_types(receiver, auth, header, expected):
    receiver.handler = require(header, expected, receiver)
    clients = EndpointClients()
    try:
        good = await deliver(subscription(receiver.url(), auth), clients)
    finally:
        await clients.aclose()
    assert good.outcome is Outcome.SUCCESS, good
    assert_no_secrets(good)
    assert "[redacted]" in json.dumps(good.request["headers"])


async def test_wrong_credentials_are_refused_by_the_receiver(receiver):
    receiver.handler = require("authorization", "Bearer something-else", receiver)
    clients = EndpointClients()
    try:
        result = await deliver(subscription(receiver.url(), {"type": "bearer_token", "token": "{{secret.TOKEN}}"}), clients)
    finally:
        await clients.aclose()
    assert result.outcome is Outcome.FAIL and result.status == 401


async def test_header_auth_with_hmac_signature(receiver):
    seen_ids: list[str] = []

    def check(received):
        timestamp = received.headers["x-timestamp"]
        expected = hmac.new(
            SECRETS["SIGNING_KEY"].encode(), f"{timestamp}.{received.body.decode()}".encode(), hashlib.sha256
        ).hexdigest()
        seen_ids.append(received.headers["x-request-id"])
        ok = received.headers["x-signature"] == f"v1={expected}" and abs(int(timestamp) - time.time()) < 60
        ok = ok and received.headers["x-signature-b64"] == base64.b64encode(bytes.fromhex(expected)).decode()
        return receiver.reply() if ok else receiver.reply(403, "{}")

    receiver.handler = check
    auth = {
        "type": "header",
        "variables": {
            "message": "{{_auth.timestamp}}.{{_request.body}}",
            "sig": "{{hmac_sha256(secret.SIGNING_KEY, vars.message)}}",
        },
        "headers": {
            "X-Timestamp": "{{_auth.timestamp}}",
            "X-Request-Id": "{{_auth.uuid}}",
            "X-Signature": "v1={{vars.sig}}",
            "X-Signature-B64": "{{hmac_sha256_base64(secret.SIGNING_KEY, _auth.timestamp + '.' + _request.body)}}",
        },
    }
    clients = EndpointClients()
    try:
        sub = subscription(receiver.url(), auth)
        first = await deliver(sub, clients)
        second = await deliver(sub, clients)
    finally:
        await clients.aclose()
    assert first.outcome is Outcome.SUCCESS and second.outcome is Outcome.SUCCESS
    assert len(set(seen_ids)) == 2  # a fresh uuid per attempt
    assert_no_secrets(first)
    assert first.request["headers"]["X-Timestamp"].isdigit()  # not a secret, stays readable


def test_header_auth_functions_match_the_config_contract():
    assert set(HEADER_AUTH_FUNCTIONS) == HEADER_AUTH_FUNCTION_NAMES


def test_header_auth_variable_cycles_are_errors():
    sub = subscription(
        "http://127.0.0.1/x",
        {"type": "header", "variables": {"a": "{{vars.b}}", "b": "{{vars.a}}"}, "headers": {"X-A": "{{vars.a}}"}},
    )
    with pytest.raises(RequestBuildError, match="refers to itself"):
        build_request(sub, ENVELOPE, {}, SECRETS, message_id="msg_c", now=1)


class TokenServer:
    """Token endpoint and protected API on the shared receiver."""

    def __init__(self, receiver, *, expires_in: int = 3600) -> None:
        self.receiver = receiver
        self.expires_in = expires_in
        self.counter = itertools.count(1)
        self.valid: set[str] = set()
        self.token_status = 200
        receiver.handler = self.handle

    @property
    def token_requests(self):
        return self.receiver.on("/token")

    def handle(self, received):
        if received.path == "/token":
            if self.token_status != 200:
                return self.receiver.reply(self.token_status, '{"error": "nope"}')
            form = parse_qs(received.body.decode())
            expected_basic = "Basic " + base64.b64encode(f"gw-client:{SECRETS['CLIENT_SECRET']}".encode()).decode()
            if form.get("grant_type") != ["client_credentials"] or received.headers.get("authorization") != expected_basic:
                return self.receiver.reply(401, '{"error": "invalid_client"}')
            token = f"tok-{next(self.counter)}"
            self.valid.add(token)
            body = {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in, "scope": form.get("scope", [""])[0]}
            return self.receiver.reply(200, json.dumps(body), delay=0.05)
        token = received.headers.get("authorization", "").removeprefix("Bearer ")
        return self.receiver.reply() if token in self.valid else self.receiver.reply(401, "{}")


def oauth2(receiver, **extra) -> dict:
    return {
        "type": "oauth2_client_credentials",
        "token_url": receiver.url("/token"),
        "client_id": "gw-client",
        "client_secret": "{{secret.CLIENT_SECRET}}",
        "scope": "calls:write",
        **extra,
    }


async def test_oauth2_token_fetched_once_for_many_deliveries(receiver):
    server = TokenServer(receiver)
    clients = EndpointClients()
    sub = subscription(receiver.url("/api"), oauth2(receiver))
    try:
        results = await asyncio.gather(*(deliver(sub, clients, message_id=f"msg_{i}") for i in range(20)))
        results.append(await deliver(sub, clients))
    finally:
        await clients.aclose()
    assert all(r.outcome is Outcome.SUCCESS for r in results)
    assert len(server.token_requests) == 1
    assert parse_qs(server.token_requests[0].body.decode())["scope"] == ["calls:write"]
    assert len(receiver.on("/api")) == 21
    for result in results:
        assert_no_secrets(result)
        assert "tok-1" not in repr(result)


async def test_oauth2_token_refreshed_before_expiry(receiver):
    server = TokenServer(receiver, expires_in=120)
    clock = [1000.0]
    clients = EndpointClients(tokens=OAuth2TokenCache(refresh_margin=30, clock=lambda: clock[0]))
    sub = subscription(receiver.url("/api"), oauth2(receiver))
    try:
        await deliver(sub, clients)
        clock[0] += 89  # still more than 30 s left
        await deliver(sub, clients)
        assert len(server.token_requests) == 1
        clock[0] += 2  # within 30 s of expiry: refresh
        result = await deliver(sub, clients)
    finally:
        await clients.aclose()
    assert result.outcome is Outcome.SUCCESS
    assert len(server.token_requests) == 2


async def test_oauth2_401_invalidates_and_retries_once(receiver):
    server = TokenServer(receiver)
    clients = EndpointClients()
    sub = subscription(receiver.url("/api"), oauth2(receiver))
    try:
        assert (await deliver(sub, clients)).outcome is Outcome.SUCCESS
        server.valid.clear()  # the endpoint revokes tok-1
        result = await deliver(sub, clients)
        api_tokens = [r.headers["authorization"] for r in receiver.on("/api")]
        server.valid.clear()
        server.token_status = 200
        receiver.handler = lambda received: server.handle(received) if received.path == "/token" else receiver.reply(401, "{}")
        still_unauthorised = await deliver(sub, clients)
    finally:
        await clients.aclose()
    assert result.outcome is Outcome.SUCCESS
    assert api_tokens == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    assert len(server.token_requests) == 3
    assert still_unauthorised.outcome is Outcome.FAIL and still_unauthorised.status == 401
    assert len(receiver.on("/api")) == 5  # one retry only


async def test_a_slow_token_endpoint_is_asked_once_and_every_waiting_attempt_ends_by_its_deadline(receiver):
    """Eight attempts need a token from an endpoint that answers after 3 s; the timeout is 1 s.
    One fetch is shared and every attempt ends within its own deadline (serialized behind a
    lock, each fetched in turn: the last one waited ~8 s, far past its lease)."""
    def handle(received):
        if received.path == "/token":
            return receiver.reply(200, '{"access_token": "late"}', delay=3.0)
        return receiver.reply()

    receiver.handler = handle
    clients = EndpointClients()
    sub = subscription(receiver.url("/api"), oauth2(receiver), timeout=1)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(deliver(sub, clients, message_id=f"msg_{i}") for i in range(8))), 30)
    finally:
        await clients.aclose()
    assert len(receiver.on("/token")) == 1
    assert all(r.outcome is Outcome.RETRY and r.status is None for r in results)
    assert max(r.latency_ms for r in results) < 4 * 1000  # each within its 1 s deadline (give or take a busy machine)
    assert receiver.on("/api") == []


async def test_a_token_answer_nested_5000_deep_is_refused_as_no_token(receiver):
    receiver.handler = lambda received: receiver.reply(200, "[" * 5000) if received.path == "/token" else receiver.reply()
    clients = EndpointClients()
    try:
        result = await deliver(subscription(receiver.url("/api"), oauth2(receiver)), clients)
    finally:
        await clients.aclose()
    assert result.outcome is Outcome.RETRY and "sent no access_token" in result.error


@pytest.mark.parametrize(("status", "outcome"), [(401, Outcome.FAIL), (503, Outcome.RETRY)])
async def test_oauth2_token_endpoint_errors(receiver, status, outcome):
    server = TokenServer(receiver)
    server.token_status = status
    clients = EndpointClients()
    try:
        result = await deliver(subscription(receiver.url("/api"), oauth2(receiver)), clients)
    finally:
        await clients.aclose()
    assert result.outcome is outcome
    assert f"answered {status}" in result.error
    assert receiver.on("/api") == []
    assert_no_secrets(result)


async def test_oauth2_client_secret_in_body(receiver):
    def handle(received):
        if received.path == "/token":
            form = parse_qs(received.body.decode())
            ok = form.get("client_secret") == [SECRETS["CLIENT_SECRET"]] and "authorization" not in received.headers
            return receiver.reply(200, '{"access_token": "body-tok"}') if ok else receiver.reply(401, "{}")
        return receiver.reply() if received.headers.get("authorization") == "Bearer body-tok" else receiver.reply(401, "{}")

    receiver.handler = handle
    clients = EndpointClients()
    try:
        result = await deliver(subscription(receiver.url("/api"), oauth2(receiver, client_auth="body")), clients)
    finally:
        await clients.aclose()
    assert result.outcome is Outcome.SUCCESS


def mtls(pki, **extra) -> dict:
    return {
        "type": "mtls",
        "cert": str(pki.client_cert),
        "key": str(pki.client_key),
        "password": "{{secret.CERT_PASSWORD}}",
        "ca_bundle": str(pki.ca),
        **extra,
    }


async def test_mtls_presents_the_client_certificate(mtls_receiver, pki):
    clients = EndpointClients()
    sub = subscription(mtls_receiver.url("/secure", host="localhost"), mtls(pki))
    try:
        first = await deliver(sub, clients)
        client = clients.client_for(sub, build_request(sub, ENVELOPE, {}, SECRETS, message_id="m", now=1).certificate)
        second = await deliver(sub, clients)
        assert clients.client_for(sub, build_request(sub, ENVELOPE, {}, SECRETS, message_id="m", now=1).certificate) is client
    finally:
        await clients.aclose()
    assert first.outcome is Outcome.SUCCESS and second.outcome is Outcome.SUCCESS, first
    assert len(mtls_receiver.on("/secure")) == 2
    assert_no_secrets(first)


async def test_mtls_server_refuses_a_client_without_certificate(mtls_receiver, pki):
    context = ssl.create_default_context(cafile=str(pki.ca))
    transport = GuardedTransport([ipaddress.ip_network("127.0.0.0/8")], ssl_context=context)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        with pytest.raises(httpx.HTTPError):
            await client.post(mtls_receiver.url("/secure", host="localhost"), content=b"{}")
    assert mtls_receiver.on("/secure") == []


async def test_mtls_wrong_password_fails_without_leaking_it(mtls_receiver, pki):
    clients = EndpointClients()
    sub = subscription(mtls_receiver.url("/secure", host="localhost"), mtls(pki, password="{{secret.PASSWORD}}"))
    try:
        result = await deliver(sub, clients)
    finally:
        await clients.aclose()
    assert result.outcome is Outcome.FAIL
    assert "cannot load certificate" in result.error
    assert_no_secrets(result)


async def test_mtls_checks_the_server_name(mtls_receiver, pki):
    clients = EndpointClients()
    sub = subscription(mtls_receiver.url("/secure", host="127.0.0.1"), mtls(pki))
    try:
        result = await deliver(sub, clients)
    finally:
        await clients.aclose()
    assert result.outcome is Outcome.RETRY  # certificate is for localhost, not 127.0.0.1
    assert "CERTIFICATE_VERIFY_FAILED" in result.error or "certificate" in result.error.lower()
