"""Fixtures for the webhook tests: real loopback receivers (uvicorn in a thread, plain and mTLS),
a bare TCP connection counter, and a test PKI generated with `cryptography`.

The suite runs with `--import-mode=importlib`, so tests do not import from here: they use the
fixtures, and `Receiver.reply(...)` to build answers."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    raw_path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    """What the receiver answers."""

    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    delay: float = 0.0


Handler = Callable[[Received], Reply]


class Receiver:
    """A Starlette app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, ssl_options: dict | None = None) -> None:
        self.requests: list[Received] = []
        self.handler: Handler = lambda received: Reply()
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="error", lifespan="off", access_log=False, **(ssl_options or {}))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self.scheme = "https" if ssl_options else "http"

    async def _endpoint(self, request: Request) -> Response:
        received = Received(
            method=request.method,
            path=request.url.path,
            raw_path=request.scope.get("raw_path", b"").decode("latin-1"),
            query=request.url.query,
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw},
            body=await request.body(),
        )
        with self._lock:
            self.requests.append(received)
        reply = self.handler(received)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return Response(reply.body, status_code=reply.status, headers=reply.headers)

    def start(self) -> Receiver:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("receiver did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    @staticmethod
    def reply(
        status: int = 200,
        body: bytes | str = b'{"ok": true}',
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """An answer for a handler to return."""
        data = body.encode() if isinstance(body, str) else body
        return Reply(status, data, {"content-type": "application/json"} if headers is None else headers, delay)

    def reset(self, handler: Handler | None = None) -> Receiver:
        with self._lock:
            self.requests.clear()
        self.handler = handler or (lambda received: Reply())
        return self

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


class ConnectionCounter:
    """A bare TCP listener that counts accepted connections (and closes them)."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@dataclass
class Pki:
    """Test CA, a server certificate for `localhost`, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_password: str


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _issue(
    name: str,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        ).add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    certificate = builder.sign(issuer_key or key, hashes.SHA256())
    return certificate, key


def make_pki(directory: Path) -> Pki:
    """Write a CA, a server certificate for `localhost` and a client certificate into `directory`."""
    ca_cert, ca_key = _issue("Gateway Test CA", None, None, ca=True)
    server_cert, server_key = _issue("localhost", ca_cert, ca_key, server=True)
    client_cert, client_key = _issue("gateway-client", ca_cert, ca_key)
    pem = serialization.Encoding.PEM
    password = "client-key-pass-5b1e"
    return Pki(
        ca=_write(directory / "ca.pem", ca_cert.public_bytes(pem)),
        server_cert=_write(directory / "server.pem", server_cert.public_bytes(pem)),
        server_key=_write(
            directory / "server.key",
            server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
        client_cert=_write(directory / "client.pem", client_cert.public_bytes(pem)),
        client_key=_write(
            directory / "client.key",
            client_key.private_bytes(
                pem,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password.encode()),
            ),
        ),
        client_key_password=password,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a `localhost` server certificate and a password-protected client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def _http_receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def receiver(_http_receiver: Receiver) -> Receiver:
    """The shared plain-HTTP receiver, reset for this test (answers 200 {"ok": true})."""
    return _http_receiver.reset()


@pytest.fixture(scope="session")
def _mtls_receiver(pki: Pki) -> Iterator[Receiver]:
    receiver = Receiver(
        {
            "ssl_certfile": str(pki.server_cert),
            "ssl_keyfile": str(pki.server_key),
            "ssl_ca_certs": str(pki.ca),
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
        }
    ).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def mtls_receiver(_mtls_receiver: Receiver) -> Receiver:
    """An HTTPS receiver for `localhost` that requires a client certificate from the test CA."""
    return _mtls_receiver.reset()


@pytest.fixture
def counter() -> Iterator[ConnectionCounter]:
    """A TCP listener on 127.0.0.1 counting connections made to it."""
    listener = ConnectionCounter()
    yield listener
    listener.close()
