"""A stand-in for cloudflared's metrics server, answering exactly as cloudflared does.

Real loopback HTTP (uvicorn in a thread), the same paths and bodies as cloudflared's
metrics/metrics.go, metrics/readiness.go and connection/metrics.go (PROTOCOLS.md §7):
`/quicktunnel` writes `{"hostname":"<name>"}` (no scheme, `""` for a named tunnel, as
text/plain like Go's default), `/metrics` is Prometheus text with
`cloudflared_tunnel_user_hostnames_counts{userHostname="https://<name>"} 1`, `/ready` is
200/503 JSON, `/healthcheck` is `OK`. An old cloudflared has no `/quicktunnel` (404).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from support import ServerThread, free_port

METRICS_TEXT = """\
# HELP build_info Build and version information
# TYPE build_info gauge
build_info{goversion="go1.22.5",revision="2024-12-19T10:07:33Z",type="",version="2024.12.2"} 1
# HELP cloudflared_tunnel_ha_connections Number of active ha connections
# TYPE cloudflared_tunnel_ha_connections gauge
cloudflared_tunnel_ha_connections 1
# HELP cloudflared_tunnel_server_locations Where each tunnel is connected to. 1 means current location, 0 means previous locations.
# TYPE cloudflared_tunnel_server_locations gauge
cloudflared_tunnel_server_locations{connection_id="0",edge_location="ams01"} 1
# HELP cloudflared_tunnel_total_requests Amount of requests proxied through all the tunnels
# TYPE cloudflared_tunnel_total_requests counter
cloudflared_tunnel_total_requests 0
{user_hostnames}# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
"""
USER_HOSTNAMES = """\
# HELP cloudflared_tunnel_user_hostnames_counts Which user hostnames cloudflared is serving
# TYPE cloudflared_tunnel_user_hostnames_counts counter
cloudflared_tunnel_user_hostnames_counts{{userHostname="{url}"}} 1
"""


def metrics_text(hostname: str | None) -> str:
    """cloudflared's /metrics body; the user-hostname counter only when there is a hostname."""
    block = USER_HOSTNAMES.format(url=f"https://{hostname}") if hostname else ""
    return METRICS_TEXT.replace("{user_hostnames}", block)


def startup_log(hostname: str, when: str = "2024-12-20T09:00:00Z") -> str:
    """cloudflared's stderr at the start of a quick tunnel (the box from cliutil LogTable)."""
    url = f"https://{hostname}"
    width = 91
    return "".join(f"{when} {line}\n" for line in [
        "INF Thank you for trying Cloudflare Tunnel. Doing so, without a Cloudflare account, is a quick way to "
        "experiment and try it out.",
        "INF Requesting new quick Tunnel on trycloudflare.com...",
        "INF +" + "-" * width + "+",
        "INF |  Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):  |",
        "INF |  " + url.ljust(width - 4) + "  |",
        "INF +" + "-" * width + "+",
        "INF Version 2024.12.2 (Checksum 0123)",
        "INF Starting metrics server on 127.0.0.1:20241/metrics",
        'INF Registered tunnel connection connIndex=0 connection=5e4b event=0 ip=198.41.200.13 location=ams01 protocol=quic',
    ])


class FakeCloudflared:
    """cloudflared's metrics server on 127.0.0.1; `restart()` comes back with a new hostname."""

    def __init__(self, hostname: str = "", *, quicktunnel: bool = True, user_hostname: bool | str = True,
                 ready: bool = True, port: int | None = None) -> None:
        self.hostname = hostname
        self.quicktunnel = quicktunnel  # False: a cloudflared older than /quicktunnel
        self.user_hostname = user_hostname  # False: no userHostname counter in /metrics; a str: that one
        self.ready = ready
        self.port = port or free_port()
        self.connector_id = str(uuid.uuid4())
        self.hits: list[str] = []
        self.server: ServerThread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _app(self) -> Starlette:
        async def quicktunnel(request: Request) -> Response:
            self.hits.append("/quicktunnel")
            if not self.quicktunnel:
                return PlainTextResponse("404 page not found\n", status_code=404)
            return PlainTextResponse(json.dumps({"hostname": self.hostname}, separators=(",", ":")))

        async def metrics(request: Request) -> Response:
            self.hits.append("/metrics")
            hostname = self.user_hostname if isinstance(self.user_hostname, str) else self.hostname
            hostname = hostname if self.user_hostname else None
            return PlainTextResponse(metrics_text(hostname), media_type="text/plain; version=0.0.4; charset=utf-8")

        async def ready(request: Request) -> Response:
            self.hits.append("/ready")
            if not self.ready:
                return Response('{"status":503,"readyConnections":0,"connectorId":"%s"}' % self.connector_id,
                                status_code=503, media_type="application/json")
            return Response('{"status":200,"readyConnections":1,"connectorId":"%s"}' % self.connector_id,
                            media_type="application/json")

        async def healthcheck(request: Request) -> Response:
            return PlainTextResponse("OK\n")

        return Starlette(routes=[Route("/quicktunnel", quicktunnel), Route("/metrics", metrics),
                                 Route("/ready", ready), Route("/healthcheck", healthcheck)])

    def start(self) -> "FakeCloudflared":
        self.server = ServerThread(self._app(), port=self.port).__enter__()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.__exit__(None, None, None)
            self.server = None

    def restart(self, hostname: str) -> "FakeCloudflared":
        """Stop, then start on the same port as a new process would: new hostname, new connector."""
        self.stop()
        self.hostname = hostname
        self.connector_id = str(uuid.uuid4())
        return self.start()


@pytest.fixture
def fake_cloudflared():
    """Start fake cloudflared metrics servers; each is stopped at the end of the test."""
    fakes: list[FakeCloudflared] = []

    def start(hostname: str = "", **kw: Any) -> FakeCloudflared:
        fake = FakeCloudflared(hostname, **kw).start()
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        fake.stop()


FAKE_CLOUDFLARED_BINARY = r'''#!{python}
"""A stand-in `cloudflared` executable: records its argv, serves a metrics server on the
--metrics address, prints the quick-tunnel box to stderr, runs until SIGTERM/SIGINT."""
import json, os, signal, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = os.environ.get("FAKE_TUNNEL_HOSTNAME", "fake-words-here.trycloudflare.com")
with open(os.environ["FAKE_CLOUDFLARED_ARGS"], "w") as f:
    json.dump(sys.argv[1:], f)
address = sys.argv[sys.argv.index("--metrics") + 1]
host, port = address.rsplit(":", 1)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        bodies = {{"/quicktunnel": json.dumps({{"hostname": HOST}}), "/ready": '{{"status":200,"readyConnections":1}}'}}
        body = bodies.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write((body or "404 page not found\n").encode())
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer((host, int(port)), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stderr.write({log!r}.replace("HOSTNAME", HOST))
sys.stderr.flush()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
signal.signal(signal.SIGINT, lambda *a: stop.set())
stop.wait(60)
server.shutdown()
sys.stderr.write("INF Initiating graceful shutdown due to signal terminated ...\n")
'''


@pytest.fixture
def cloudflared_binary(tmp_path) -> Path:
    """A directory holding a fake `cloudflared` executable (put it on PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "cloudflared"
    script.write_text(FAKE_CLOUDFLARED_BINARY.format(python=sys.executable, log=startup_log("HOSTNAME")))
    os.chmod(script, 0o755)
    return bin_dir


@pytest.fixture
def cloudflared_says():
    """cloudflared's texts: `.metrics(hostname)` (/metrics body), `.startup_log(hostname)` (stderr)."""
    from types import SimpleNamespace

    return SimpleNamespace(metrics=metrics_text, startup_log=startup_log)
