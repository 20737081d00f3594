"""Test helpers: real uvicorn servers on loopback, `gateway serve` processes, provider signing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

ROOT = Path(__file__).resolve().parent.parent
TWILIO_TOKEN = "test-twilio-auth-token"
TWILIO_SID = "AC" + "0" * 32
VONAGE_SECRET = "test-vonage-signature-secret-0123456789"
VONAGE_API_KEY = "abcd1234"
API_KEY = "test-admin-api-key"
TELNYX_SEED = bytes(range(32))  # the test account's Ed25519 private key (seed); its public key is configured
PLIVO_AUTH_ID = "MAXXXXXXXXXXXXXXXXXX"
PLIVO_TOKEN = "test-plivo-auth-token"


def telnyx_public_key(seed: bytes = TELNYX_SEED) -> str:
    """The base64 public key Mission Control would show for `seed`'s key pair."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def telnyx_headers(body: bytes = b"", *, timestamp: int | None = None, seed: bytes = TELNYX_SEED) -> dict[str, str]:
    """The headers Telnyx signs a webhook with, signed by PyNaCl (the telnyx SDK's own library)."""
    import base64

    from nacl.signing import SigningKey

    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SigningKey(seed).sign(stamp.encode() + b"|" + body).signature
    return {"telnyx-signature-ed25519": base64.b64encode(signature).decode(), "telnyx-timestamp": stamp}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """A real uvicorn server for an ASGI app, on 127.0.0.1, in a background thread."""

    def __init__(self, app: Any, *, port: int | None = None, ws_max_size: int = 1 << 20, http: Any = "auto") -> None:
        self.port = port or free_port()
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", proxy_headers=False,
                                     ws_max_size=ws_max_size, http=http)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A config with both providers, fixed secrets and a store under `tmp_path`."""
    config: dict[str, Any] = {
        "store": f"sqlite:///{tmp_path}/gateway.db",
        "data_dir": str(tmp_path),
        "api_key": API_KEY,
        "secret_key": "test-secret-key",
        "providers": {
            # REST calls (hang-ups) go to a closed loopback port: tests never reach the internet.
            "twilio": {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "api_base_url": "http://127.0.0.1:9"},
            "vonage": {"signature_secret": VONAGE_SECRET, "api_key": VONAGE_API_KEY, "application_id": "app-1",
                       "api_base_url": "http://127.0.0.1:9"},
        },
        "shutdown": {"drain_seconds": 2},  # a test's calls left live do not hold its `gateway serve` for long
    }
    config.update(overrides)
    return config


def plivo_headers(method: str, url: str, params: dict[str, str] | None = None, *, token: str = PLIVO_TOKEN,
                  nonce: str | None = None) -> dict[str, str]:
    """The V3 headers Plivo signs a request with, computed by the plivo SDK's own functions."""
    import uuid

    from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3

    nonce = nonce or str(uuid.uuid4().int)[:20]
    base = construct_post_url(url, dict(params)) if method == "POST" and params else construct_get_url(url, {})
    signature = get_signature_v3(token.encode(), base.decode(), nonce.encode()).decode()
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


def telnyx_config(**overrides: Any) -> dict[str, Any]:
    """`providers.telnyx` of the test account (REST to a closed loopback port unless overridden)."""
    return {"public_key": telnyx_public_key(), "api_key": "KEY-test-telnyx", "account_sid": "acct-telnyx",
            "application_id": "texml-app-1", "api_base_url": "http://127.0.0.1:9", **overrides}


def plivo_config(**overrides: Any) -> dict[str, Any]:
    """`providers.plivo` of the test account (REST to a closed loopback port unless overridden)."""
    return {"auth_id": PLIVO_AUTH_ID, "auth_token": PLIVO_TOKEN, "api_base_url": "http://127.0.0.1:9", **overrides}


def carrier_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """`base_config` with Telnyx and Plivo configured beside Twilio and Vonage."""
    config = base_config(tmp_path)
    config["providers"] = {**config["providers"], "telnyx": telnyx_config(), "plivo": plivo_config()}
    config.update(overrides)
    return config



class GatewayProcess:
    """A real `gateway serve` process with a config file; stopped (or killed) by the test."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.config_path = tmp_path / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> "GatewayProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.config_path.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not become ready: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = 15) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None




def twilio_signature(url: str, params: dict[str, Any] | None = None, token: str = TWILIO_TOKEN) -> str:
    """The X-Twilio-Signature Twilio would send, computed by the twilio package itself."""
    from twilio.request_validator import RequestValidator

    return RequestValidator(token).compute_signature(url, params or {})


def twilio_status_callback(server: Any, run_id: str, status: str, sid: str | None = None, **extra: Any) -> "httpx.Response":
    """POST a Twilio-signed status callback for `run_id` to a gateway (anything with `.url`); it must be acknowledged."""
    params = {"CallSid": sid or ("CA" + run_id.encode().hex().ljust(32, "0")[:32]), "AccountSid": TWILIO_SID,
              "CallStatus": status, "From": "+1555", "To": "+1666", **extra}
    url = f"{server.url}/api/v1/telephony/status-callback/{run_id}"
    response = httpx.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)}, timeout=10)
    assert response.status_code == 204, response.text
    return response


def vonage_jwt(body: bytes = b"", *, secret: str = VONAGE_SECRET, iat: float | None = None, **claims: Any) -> str:
    """A Vonage signed-webhook JWT, built with pyjwt exactly as Vonage signs them."""
    import hashlib
    import uuid

    import jwt

    payload: dict[str, Any] = {
        "iat": int(time.time() if iat is None else iat),
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "api_key": VONAGE_API_KEY,
        "application_id": "app-1",
    }
    if body:
        payload["payload_hash"] = hashlib.sha256(body).hexdigest()
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256", headers={"typ": "JWT"})


class Receiver:
    """A real HTTP receiver on loopback that records every request and answers as scripted.

    `script(request_number, path) -> (status, headers, body, delay_seconds)`; default 200.
    """

    def __init__(self, script: Any = None) -> None:
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        self.script = script or (lambda n, path: (200, {}, b"{}", 0.0))
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

        async def handle(request):
            body = await request.body()
            with self._lock:
                number = len(self.requests)
                self.requests.append({"path": request.url.path, "query": request.url.query, "method": request.method,
                                      "headers": dict(request.headers), "body": body, "at": time.time()})
            status, headers, answer, delay = self.script(number, request.url.path)
            if delay:
                await asyncio.sleep(delay)
            return Response(answer, status_code=status, headers=headers, media_type="application/json")

        app = Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
        self.server = ServerThread(app)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> "Receiver":
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"receiver got {len(self.requests)} requests, expected {count}")

    def bodies(self) -> list[dict[str, Any]]:
        import json as _json

        return [_json.loads(r["body"]) for r in self.requests if r["body"]]


async def eventually(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """`wait_until` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} not reached within {timeout} s")


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError(f"{what} not reached within {timeout} s")
