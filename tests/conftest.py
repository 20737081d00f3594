"""Shared fixtures: the gateway on a real loopback server, in-thread or as a `gateway serve` process."""

from __future__ import annotations

from typing import Any

import pytest

from support import GatewayProcess, ServerThread, base_config


@pytest.fixture
def gateway_server(tmp_path):
    """Start the gateway app (built from a config dict) on a real loopback server."""
    from gateway.app import create_app
    from gateway.config import parse_config

    servers: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        app = create_app(parse_config(base_config(tmp_path, **overrides), env={}))
        server = ServerThread(app).__enter__()
        server.app = app
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def gateway_process(tmp_path):
    """Start real `gateway serve` processes; each is stopped at the end of the test."""
    procs: list[GatewayProcess] = []

    def start(config: dict[str, Any] | None = None, **kw: Any) -> GatewayProcess:
        proc = GatewayProcess(tmp_path, config or base_config(tmp_path), **kw).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
