"""No credential reaches a log, the timeline, an event or a stored attempt.

The pure redaction module first, then a real `gateway serve` (SQLite and PostgreSQL) with
planted credentials everywhere they can be configured: the store URL, the agent URL (userinfo
and query tokens), and webhook subscriptions whose endpoint answers 401 quoting every
credential it was sent. Its log output, its SQLite file and its admin API are then searched
for each secret in each encoding it travelled in."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.redact import REDACTED, Redactor, credential_forms, redact_url, url_secrets
from support import API_KEY, ROOT, ServerThread, base_config, free_port, wait_until
from media.test_media_sessions import open_stream
from media.test_bridge import twilio_answer

# -- the pure module ------------------------------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    ("postgresql://gw:S3cret@db:5432/gw", f"postgresql://gw:{REDACTED}@db:5432/gw"),
    ("wss://u:p%40ss@agent.example/ws?token=abc&lang=en&api_key=k1", f"wss://u:{REDACTED}@agent.example/ws?token={REDACTED}&lang=en&api_key={REDACTED}"),
    ("https://h/x?access_token=t&key=k&my_secret=s&sig=z", f"https://h/x?access_token={REDACTED}&key={REDACTED}&my_secret={REDACTED}&sig={REDACTED}"),
    ("https://h/x?page=2&lang=en", "https://h/x?page=2&lang=en"),
    ("postgresql://gw@db/gw", "postgresql://gw@db/gw"),
    ("echo", "echo"),
    ("sqlite:///data/gateway.db", "sqlite:///data/gateway.db"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_url_secrets_are_raw_and_decoded():
    assert url_secrets("wss://u:p%40ss@h/?token=a%2Bb") == ["p%40ss", "p@ss", "a%2Bb", "a+b"]
    assert url_secrets("https://h/?token=a+b") == ["a+b", "a b"]
    assert url_secrets("https://h/?q=1") == [] and url_secrets(None) == []


def test_credential_forms_and_every_encoding_are_redacted():
    basic = "Basic " + base64.b64encode(b"hookuser:pa ss/w&rd").decode()
    forms = credential_forms(basic)
    assert forms[1:] == [basic.split()[1], "hookuser:pa ss/w&rd", "pa ss/w&rd"]
    assert credential_forms("Bearer tok-1") == ["Bearer tok-1", "tok-1"]
    redactor = Redactor(forms)
    for shown in ("pa ss/w&rd", quote("pa ss/w&rd", safe=""), quote_plus("pa ss/w&rd"), json.dumps(basic)[1:-1],
                  basic.split()[1]):
        assert redactor.text(f"401: you sent {shown}!") == f"401: you sent {REDACTED}!"


# -- a real gateway -------------------------------------------------------------------------

AGENT_PASSWORD = "AgentPw-7dd1e0c3"
AGENT_TOKEN = "AgentTok-41b7f2a9"
AGENT_KEY = "AgentKey-9c55e1d0"
BEARER = "BearerTok-3f9a0c7e"
BASIC_PASSWORD = "BasicPw-a1 b2/c3&d4"
API_KEY_VALUE = "HookKey-5e8d2b61"
CLIENT_SECRET = "ClientSecret-0b7c4d2e"
OAUTH_TOKEN = "OAuthTok-6a3e9f11"
URL_TOKEN = "UrlTok-c2d8a4b6"
BASIC_B64 = base64.b64encode(f"hookuser:{BASIC_PASSWORD}".encode()).decode()
SECRETS = [AGENT_PASSWORD, AGENT_TOKEN, AGENT_KEY, BEARER, BASIC_PASSWORD, API_KEY_VALUE, CLIENT_SECRET, OAUTH_TOKEN,
           URL_TOKEN, BASIC_B64]


def leaks(text: str) -> list[str]:
    """Every planted secret found in `text`, in any of its encodings."""
    found = []
    for secret in SECRETS:
        for form in {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}:
            if form in text:
                found.append(form)
    return found


def echo_app() -> Starlette:
    """An endpoint that quotes back every credential it was sent (and an OAuth2 token endpoint)."""

    async def token(request: Request) -> Response:
        return JSONResponse({"access_token": OAUTH_TOKEN, "token_type": "Bearer", "expires_in": 3600})

    async def hook(request: Request) -> Response:
        authorization = request.headers.get("authorization", "")
        quoted = {"authorization": authorization, "scheme_value": authorization.partition(" ")[2],
                  "x-api-key": request.headers.get("x-api-key"), "query": request.url.query}
        if authorization.startswith("Basic "):
            quoted["decoded"] = base64.b64decode(authorization[6:]).decode()
            quoted["password"] = quoted["decoded"].partition(":")[2]
            quoted["password_urlencoded"] = quote(quoted["password"], safe="")
        text = f"401 Unauthorized: rejected credentials {json.dumps(quoted)} plain {quoted['scheme_value']}"
        return Response(text, status_code=401, media_type="text/plain")

    return Starlette(routes=[Route("/token", token, methods=["POST"]), Route("/{path:path}", hook, methods=["POST"])])


def hook(receiver_url: str, name: str, auth: dict, path: str = "/hook") -> dict:
    return {"name": name, "events": ["call.agent_failed"], "url": receiver_url + path, "auth": auth,
            "retry": {"schedule": [], "jitter": 0.0}, "timeout": 5, "allow_networks": ["127.0.0.0/8"]}


def test_gateway_serve_keeps_every_planted_credential_out(gateway_process, store_config, tmp_path):
    with ServerThread(echo_app()) as receiver:
        agent_url = f"ws://agentuser:{AGENT_PASSWORD}@127.0.0.1:{free_port()}/agent?token={AGENT_TOKEN}&api_key={AGENT_KEY}&lang=en"
        config = base_config(tmp_path, **store_config, agent={"url": agent_url, "connect_timeout": 1}, log={"format": "text"},
                             webhooks=[
                                 hook(receiver.url, "bearer", {"type": "bearer_token", "token": BEARER}, f"/hook?access_token={URL_TOKEN}"),
                                 hook(receiver.url, "basic", {"type": "basic_auth", "username": "hookuser", "password": BASIC_PASSWORD}),
                                 hook(receiver.url, "apikey", {"type": "api_key", "value": API_KEY_VALUE}),
                                 hook(receiver.url, "oauth", {"type": "oauth2_client_credentials", "token_url": receiver.url + "/token",
                                                              "client_id": "gw-client", "client_secret": CLIENT_SECRET}),
                             ])
        gateway = gateway_process(config)

        async def call() -> None:
            ws_url, params = await twilio_answer(gateway)
            client = await open_stream(ws_url, params)
            await asyncio.wait_for(client.ws.wait_closed(), 10)  # the agent is unreachable: the call is hung up

        asyncio.run(call())
        admin = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        deliveries = wait_until(lambda: (d := admin.get("/api/v1/deliveries?status=failed").json()["deliveries"]) and len(d) == 4 and d,
                                timeout=20, what="four failed deliveries")
        responses = [admin.get("/api/v1/calls/run-media").text, admin.get("/api/v1/deliveries").text,
                     admin.get("/api/v1/subscriptions").text]
        details = [admin.get(f"/api/v1/deliveries/{d['id']}").json() for d in deliveries]
        gateway.stop()
    call = json.loads(responses[0])
    failed = next(t for t in call["timeline"] if t["kind"] == "agent.failed")["data"]["reason"]
    assert f"agentuser:{REDACTED}@127.0.0.1" in failed and f"token={REDACTED}" in failed and "lang=en" in failed
    for detail in details:  # each endpoint quoted what it got: the record shows only redactions
        (attempt,) = detail["attempts"]
        assert attempt["status"] == 401 and REDACTED in attempt["response"], attempt
        event = detail["event"]
        assert event["type"] == "call.agent_failed" and REDACTED in event["data"]["detail"]["reason"]
    log = gateway.log()
    assert f"agent=ws://agentuser:{REDACTED}@" in log and "gateway ready: store=" in log
    store_url = store_config.get("store")
    if store_url:  # PostgreSQL: the URL's password is not in the ready line
        assert f"store={redact_url(store_url)}" in log and ":gateway@" not in log
    texts = {"log": log, **{f"api {i}": t for i, t in enumerate(responses)},
             **{f"delivery {i}": json.dumps(d) for i, d in enumerate(details)}}
    if not store_url:
        for path in Path(tmp_path).glob("gateway.db*"):
            texts[path.name] = path.read_bytes().decode("latin-1")
    assert {where: found for where, text in texts.items() if (found := leaks(text))} == {}


def test_check_config_shows_no_credential(tmp_path):
    config = base_config(tmp_path, store="postgresql://gw:PgPw-5b1c9e77@db.internal:5432/gw",
                         agent={"url": f"wss://agentuser:{AGENT_PASSWORD}@agent.example/ws?token={AGENT_TOKEN}"})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "--config", str(path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"store: postgresql://gw:{REDACTED}@db.internal:5432/gw" in out.stdout
    assert f"agent: wss://agentuser:{REDACTED}@agent.example/ws?token={REDACTED}" in out.stdout
    assert "PgPw-5b1c9e77" not in out.stdout + out.stderr and not leaks(out.stdout + out.stderr)


@pytest.mark.postgresql
def test_webhooks_test_names_the_store_without_its_password(tmp_path):
    from postgres_support import postgres_schema_url_sync

    with postgres_schema_url_sync() as url:
        hooks = [{"name": "crm", "events": ["call.ended"], "url": "http://127.0.0.1:9/hook", "allow_networks": ["127.0.0.0/8"]}]
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(base_config(tmp_path, store=url, webhooks=hooks)))
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "webhooks", "test", "crm", "--run", "no-such-run",
                              "--config", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and f"in {redact_url(url)}" in out.stderr and REDACTED in out.stderr, out.stderr
    assert url.split("@")[0] not in out.stderr  # user:password@
