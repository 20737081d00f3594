"""One worker of `gateway serve --workers N`: a whole gateway serving the parent's socket.

It runs in a process group of its own, so a terminal's Ctrl-C reaches the parent only and the
parent tells every worker once (first signal: drain, second: stop now). It ends at once when the
parent dies (a SIGKILLed parent must not leave workers holding the port).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.store import Store, open_store_for, sqlite_options

log = logging.getLogger("gateway")

PARENT_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is started with (pickled to it by the parent)."""

    index: int
    config: GatewayConfig  # with the development secrets the parent filled in, if any
    host: str
    port: int
    writer_socket: str | None  # SQLite: the shared writer process's socket
    relay_socket: str | None  # SQLite: the control relay's socket
    runtime: str = ""  # the parent's directory of sockets and metrics files (removed here if the parent dies)


def worker_store(spec: WorkerSpec) -> Store:
    """The worker's store: on SQLite one that writes through the shared writer process and the
    relay; on PostgreSQL the usual one (each worker connects and LISTENs itself)."""
    url = spec.config.store
    if not url.startswith("sqlite:///"):
        return open_store_for(url)
    from gateway.workers.writer_client import WorkerSQLiteStore

    assert spec.writer_socket is not None and spec.relay_socket is not None
    path, options = sqlite_options(url)
    return WorkerSQLiteStore(
        path,
        synchronous=options.get("synchronous", "FULL"),
        writer_socket=spec.writer_socket,
        relay_socket=spec.relay_socket,
    )


class PidStamp(logging.Filter):
    """Names the worker (its pid) on every log line: the workers share one log."""

    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.pid = self.pid
        return True


def _watch_parent(parent: int, runtime: str) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(PARENT_CHECK_SECONDS)
        log.error("worker pid %d: the gateway's parent process (pid %d) is gone: exiting now", os.getpid(), parent)
        if runtime:
            shutil.rmtree(runtime, ignore_errors=True)  # the parent's to remove, had it not been killed
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_worker(spec: WorkerSpec, parent: int, sock: socket.socket) -> None:
    """A worker's main (multiprocessing spawn)."""
    os.setpgrp()
    if os.getppid() != parent:  # the parent died while this process started
        os._exit(1)
    _watch_parent(parent, spec.runtime)
    from gateway.app import create_app
    from gateway.logs import configure_logging
    from gateway.serve import run

    config = spec.config
    configure_logging(fmt=config.log.format, level=config.log.level, secrets=config.secret_strings())
    for handler in logging.getLogger().handlers:
        handler.addFilter(PidStamp())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from gateway.workers.metrics import start_publishing

        start_publishing()
    log.info("worker %d started: pid %d", spec.index, os.getpid())
    app = create_app(config, store=worker_store(spec))
    run(
        app,
        host=spec.host,
        port=spec.port,
        drain_seconds=config.shutdown.drain_seconds,
        read_timeout=config.limits.read_timeout_seconds,
        lean_media=config.listen.media_websocket == "picows",
        sockets=[sock],
    )
    log.info("worker %d (pid %d) stopped", spec.index, os.getpid())
