"""Shared fixtures: the gateway on a real loopback server, in-thread or as a `gateway serve` process."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from postgres_support import BACKENDS, postgres_schema_url_sync
from support import GatewayProcess, ServerThread, base_config

# Hypothesis profiles. `ci` (the default) is reproducible and bounded: derandomized, a fixed
# number of examples, no deadline (the machine is shared). `fuzz` (`make fuzz`) is randomized
# and runs many more; a test's own `@settings(max_examples=...)` still wins over either.
# Pick one with HYPOTHESIS_PROFILE=fuzz or `pytest --hypothesis-profile fuzz`.
settings.register_profile("ci", derandomize=True, max_examples=50, deadline=None, print_blob=True)
settings.register_profile(
    "fuzz", derandomize=False, max_examples=2000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def gateway_server(tmp_path):
    """Start the gateway app (built from a config dict) on a real loopback server, served as
    `gateway serve` serves it: the gateway's HTTP protocol, media sockets on the lean layer
    unless `listen.media_websocket` says `uvicorn` (GATEWAY_TEST_MEDIA_WEBSOCKET=uvicorn: the
    whole suite on the Starlette fallback)."""
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.serve import http_protocol_for

    servers: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        layer = os.environ.get("GATEWAY_TEST_MEDIA_WEBSOCKET")
        if layer and "listen" not in overrides:
            overrides["listen"] = {"media_websocket": layer}
        config = parse_config(base_config(tmp_path, **overrides), env={})
        app = create_app(config)
        server = ServerThread(app, http=http_protocol_for(app, config.limits.read_timeout_seconds,
                                                          lean_media=config.listen.media_websocket == "picows")).__enter__()
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


@pytest.fixture(params=BACKENDS)
def store_config(request):
    """Config overrides naming the store, once per backend: `{}` (the default SQLite store under
    `tmp_path`), or `{"store": <fresh PostgreSQL schema URL>}` dropped afterwards."""
    if request.param == "sqlite":
        yield {}
        return
    with postgres_schema_url_sync() as url:
        yield {"store": url}


def pytest_configure(config):
    named = config.getoption("hypothesis_profile", None)  # `--hypothesis-profile` beats the env var
    if named:
        settings.load_profile(named)
    config.addinivalue_line("markers", "postgresql: needs the PostgreSQL server of postgres_support")


def pytest_collection_modifyitems(config, items):
    from postgres_support import POSTGRES_PROBLEM

    if not POSTGRES_PROBLEM:
        return
    kept = [item for item in items if item.get_closest_marker("postgresql") is None]
    dropped = [item for item in items if item.get_closest_marker("postgresql") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter):
    from postgres_support import POSTGRES_PROBLEM, POSTGRES_URL

    if POSTGRES_PROBLEM:
        terminalreporter.write_sep("!", "PostgreSQL half of the suite NOT run", red=True)
        terminalreporter.write_line(f"{POSTGRES_URL}: {POSTGRES_PROBLEM}")
        terminalreporter.write_line("Set GATEWAY_TEST_POSTGRES_URL or run `bash .ci/run` to test both backends.")
    else:
        terminalreporter.write_line(f"PostgreSQL half of the suite ran against {POSTGRES_URL}")
