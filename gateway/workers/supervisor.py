"""The parent of `gateway serve --workers N`: one port, N workers, and what they share.

It binds the listening socket once (as uvicorn's own multiprocess supervisor does) and hands it
to every worker (`child.run_worker`), so the kernel spreads connections over the workers that
accept. On SQLite it also runs the one store writer process (`shared_writer`) on a Unix socket
it keeps across the writer's restarts, and the control relay (`relay.RelayServer`). It gives the
workers a fresh `PROMETHEUS_MULTIPROC_DIR` (`metrics`). A worker or writer that exits is started
again (after 1 s, doubling up to 30 s while it keeps dying within a minute).

Signals: the first SIGTERM or SIGINT is passed to every worker, which drains (`serve.py`); a
second is passed on too and the workers stop at once. The parent exits 0 when every worker has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.ipc import Backoff, log_restart
from gateway.store import sqlite_options
from gateway.workers.child import WorkerSpec, run_worker
from gateway.workers.relay import RelayServer
from gateway.workers.shared_writer import run_shared_writer

log = logging.getLogger("gateway")


class Restarting:
    """A child process the supervisor keeps running: started by `start()`, started again when it
    exits (unless stopping), its exits reported to `on_exit(pid, exit code)`."""

    MIN_DELAY = 1.0
    MAX_DELAY = 30.0
    STABLE_AFTER = 60.0

    def __init__(
        self,
        label: str,
        target: Callable[..., None],
        args: tuple[Any, ...],
        on_exit: Callable[[int, int | None], None] = lambda pid, code: None,
    ) -> None:
        self.label = label
        self.target = target
        self.args = args
        self.on_exit = on_exit
        self.process: Any = None
        self.stopping = False
        self._backoff = Backoff(self.MIN_DELAY, self.MAX_DELAY, self.STABLE_AFTER)
        self._started = 0.0
        self._restart: asyncio.TimerHandle | None = None
        self._exited = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self._restart = None
        if self.stopping:
            return
        context = multiprocessing.get_context("spawn")
        again = self.process is not None
        self.process = context.Process(target=self.target, args=self.args, name=f"gateway {self.label}")
        self.process.start()
        if again:
            log.info("%s started again: pid %d", self.label, self.process.pid)
        self._started = time.monotonic()
        self._exited.clear()
        asyncio.get_running_loop().add_reader(self.process.sentinel, self._on_sentinel)

    def _on_sentinel(self) -> None:
        loop = asyncio.get_running_loop()
        process = self.process
        loop.remove_reader(process.sentinel)
        process.join(1.0)
        self.on_exit(process.pid, process.exitcode)
        self._exited.set()
        if self.stopping:
            return
        ran = time.monotonic() - self._started
        delay = self._backoff.next(ran)
        log_restart(self.label, process.pid, process.exitcode, ran, delay)
        self._restart = loop.call_later(delay, self.start)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    async def wait(self) -> None:
        """Until the current process has exited (at once if none runs)."""
        if self.process is not None and self.process.exitcode is None and self.process.is_alive():
            await self._exited.wait()

    def stop_restarting(self) -> None:
        self.stopping = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None


def bind_socket(host: str, port: int) -> socket.socket:
    """The one listening socket every worker serves (uvicorn's own binding: IPv6, SO_REUSEADDR)."""
    import uvicorn

    return uvicorn.Config("gateway.app:create_app", host=host, port=port, log_config=None).bind_socket()


def _unix_listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    return sock


class Supervisor:
    """See the module."""

    def __init__(self, config: GatewayConfig, *, host: str, port: int, workers: int) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.count = workers
        self.runtime = tempfile.mkdtemp(prefix="gateway-workers-")  # 0700: sockets and metrics files
        self.sqlite = config.store.startswith("sqlite:///")
        self.workers: list[Restarting] = []
        self.writer: Restarting | None = None
        self.relay: RelayServer | None = None
        self._signals = 0

    def run(self) -> int:
        metrics_dir = Path(self.runtime, "metrics")
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # the children's environment
        try:
            listener = bind_socket(self.host, self.port)
            try:
                asyncio.run(self._run(listener))
            finally:
                listener.close()
        finally:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(self.runtime, ignore_errors=True)
        return 0

    async def _run(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        writer_socket = relay_socket = None
        unix: list[socket.socket] = []
        if self.sqlite:
            path, options = sqlite_options(self.config.store)
            writer_socket = os.path.join(self.runtime, "writer.sock")
            relay_socket = os.path.join(self.runtime, "control.sock")
            writer_listener = _unix_listener(writer_socket)
            relay_listener = _unix_listener(relay_socket)
            unix += [writer_listener, relay_listener]
            setup = {"path": path, "synchronous": options.get("synchronous", "FULL")}
            self.writer = Restarting("store writer process", run_shared_writer, (setup, writer_listener))
            self.writer.start()
            log.info("store writer process started: pid %s (shared by %d workers)", self.writer.pid, self.count)
            self.relay = RelayServer(relay_listener)
            await self.relay.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        for index in range(self.count):
            spec = WorkerSpec(index, self.config, self.host, self.port, writer_socket, relay_socket, self.runtime)
            worker = Restarting(f"worker {index}", run_worker, (spec, os.getpid(), listener), self._worker_exited)
            worker.start()
            self.workers.append(worker)
        log.info(
            "gateway serving %s:%d with %d workers (pids %s)",
            self.host,
            self.port,
            self.count,
            ", ".join(str(w.pid) for w in self.workers),
        )
        while not all(w.stopping for w in self.workers):
            await asyncio.sleep(0.2)
        await asyncio.gather(*(w.wait() for w in self.workers))
        log.info("every worker has stopped")
        if self.relay is not None:
            await self.relay.stop()
        if self.writer is not None:
            self.writer.stop_restarting()
            self.writer.signal(signal.SIGUSR1)  # it finishes the round it has, then exits
            try:
                await asyncio.wait_for(self.writer.wait(), 10)
            except TimeoutError:
                log.warning("store writer process (pid %s) did not stop within 10 s: killed", self.writer.pid)
                self.writer.signal(signal.SIGKILL)
        for sock in unix:
            sock.close()

    def _worker_exited(self, pid: int, code: int | None) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # its live gauges (media sessions) drop out of /metrics

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        name = signal.Signals(sig).name
        if self._signals == 1:
            log.info("%s: every worker drains (a second signal stops them at once)", name)
        else:
            log.warning("second %s: every worker stops now", name)
        for worker in self.workers:
            worker.stop_restarting()
            worker.signal(signal.SIGTERM)


def prepare_store(config: GatewayConfig) -> bool:
    """Open the store once before any worker starts: migrations run here, alone, and a store that
    cannot be opened stops start-up with one line instead of N workers failing in turn."""
    from gateway.store import StoreError, open_store_for

    async def probe() -> None:
        store = open_store_for(config.store, writer_process=False)
        await store.open()
        await store.close()

    try:
        asyncio.run(probe())
    except StoreError as exc:
        log.error("cannot start the workers: %s", exc)
        return False
    return True


def serve_workers(config: GatewayConfig, *, host: str, port: int, workers: int) -> int:
    """Run `workers` workers on `host:port` until they have stopped (see the module)."""
    return Supervisor(config, host=host, port=port, workers=workers).run()
