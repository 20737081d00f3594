"""Delivery processes: webhooks sent from separate processes, so that the gateway's own process
keeps its core for callbacks, media and the API.

With `delivery.processes: N` (N >= 1), `gateway serve` starts N child processes (multiprocessing
`spawn`: fresh interpreters that get the config and nothing else). Each opens the same store and
runs a `DeliveryWorker` for the configured subscriptions; the gateway's own worker keeps only
the campaigns' inline webhooks, which are registered at run time in that process. The outbox is
all they share: a claim is a lease in the store, so no row is sent by two processes at once, and
a process that dies leaves leases that expire (at-least-once, as with one process). On SQLite,
the store's cross-process write lock keeps their commits from waiting on each other's polling.

The parent holds the write end of one pipe per child and writes
- `w` after a commit that queued deliveries (at most once per loop iteration), so the child
  claims at once instead of at its next poll;
- `h` when an operator re-enabled a subscription: the child re-reads endpoint health.
A child that reads end-of-file has lost its parent (a clean stop or `kill -9`): it stops as on
SIGTERM, letting attempts on the wire finish and releasing its other leases. A child ignores
SIGINT (a terminal's Ctrl-C reaches the whole group; the parent decides when its children stop).
A child that exits while the gateway runs is logged and started again (after 1 s, doubling up to
30 s while it keeps failing within a minute of its start).

Metrics: `share_metrics` turns on prometheus_client's multiprocess mode before any metric
exists, so that `/metrics` on the gateway sums every process's counters.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the child imports the heavy modules itself, after setting up its logging
    from gateway.config import GatewayConfig

log = logging.getLogger("gateway.webhooks")

METRICS_DIR = "run/metrics"
RESTART_MIN = 1.0
RESTART_MAX = 30.0
STABLE_AFTER = 60.0  # a child that ran this long starts again after RESTART_MIN
# The GIL switch interval of every process that shares the store's write lock. SQLite releases
# the GIL around each statement; taking it back waits for the other busy thread to yield, by
# default after 5 ms, and all that while the writer holds the lock every process waits on.
# Measured (bench/webhooks.py, 500 ev/s, 2 delivery processes): the gateway's writer held the
# lock 1.3-1.9 ms per group at 0.5 ms against 2.2-4.0 ms at 5 ms; e2e p99 64 ms against 111.
SWITCH_INTERVAL = 0.0005


def share_metrics(config: "GatewayConfig") -> Path:
    """Count metrics in files under `<data_dir>/run/metrics`, shared with the delivery processes.

    Must run before `prometheus_client` is imported (its multiprocess mode is chosen at import).
    The directory is emptied first: counters start at zero with each start of the gateway.
    An operator's own `PROMETHEUS_MULTIPROC_DIR` is respected (and not emptied).
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    path = Path(config.data_dir) / METRICS_DIR
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


class _Child:
    """One delivery process slot: the process in it now, its pipe, its restart state."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None  # a multiprocessing SpawnProcess
        self.writer: Connection | None = None
        self.started_at = 0.0
        self.backoff = RESTART_MIN
        self.restart: asyncio.TimerHandle | None = None


class DeliveryProcesses:
    """The parent's side: starts, wakes, supervises and stops the delivery processes."""

    def __init__(self, config: "GatewayConfig", count: int) -> None:
        self.config = config
        self.children = [_Child(index) for index in range(count)]
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = b""
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        """The live children's process ids."""
        return [c.process.pid for c in self.children if c.process is not None and c.process.is_alive()]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sys.setswitchinterval(SWITCH_INTERVAL)  # this process shares the write lock with them
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            log.warning("delivery processes count their metrics apart: /metrics shows only this process's"
                        " (`gateway serve` shares them; elsewhere call share_metrics() before importing the app)")
        for child in self.children:
            self._spawn(child)
        log.info("started %d delivery processes: pids %s", len(self.children), ", ".join(map(str, self.pids)))

    def _spawn(self, child: _Child) -> None:
        assert self._loop is not None
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=run_child, args=(self.config, reader, child.index),
                                        name=f"gateway-delivery-{child.index}")
        process.start()
        reader.close()  # the child has its own copy; ours would keep its end-of-file from coming
        child.process, child.writer, child.started_at = process, writer, time.monotonic()
        os.set_blocking(writer.fileno(), False)
        self._loop.add_reader(process.sentinel, self._exited, child)

    def _exited(self, child: _Child) -> None:
        assert self._loop is not None
        process = child.process
        self._loop.remove_reader(process.sentinel)
        process.join(1.0)  # the sentinel closes while the child exits, a moment before it can be reaped
        self._close_pipe(child)
        if self._stopping:
            return
        ran = time.monotonic() - child.started_at
        if ran >= STABLE_AFTER:
            child.backoff = RESTART_MIN
        log.error("delivery process %d (pid %d) exited with code %s after %.0f s; starting it again in %.0f s",
                  child.index, process.pid, process.exitcode, ran, child.backoff)
        child.restart = self._loop.call_later(child.backoff, self._restart, child)
        child.backoff = min(child.backoff * 2, RESTART_MAX)

    def _restart(self, child: _Child) -> None:
        child.restart = None
        if not self._stopping:
            self._spawn(child)
            log.info("delivery process %d started again: pid %d", child.index, child.process.pid)

    @staticmethod
    def _close_pipe(child: _Child) -> None:
        if child.writer is not None:
            child.writer.close()
            child.writer = None

    # -- waking ---------------------------------------------------------------------------
    def wake(self) -> None:
        """Deliveries were queued: every child claims now (one write per child per loop turn)."""
        self._signal(b"w")

    def refresh_health(self) -> None:
        """An operator changed endpoint health: every child re-reads it, then claims."""
        self._signal(b"h")

    def _signal(self, what: bytes) -> None:
        if self._loop is None or self._stopping:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        if what not in self._pending:
            self._pending += what

    def _flush(self) -> None:
        data, self._pending = self._pending, b""
        for child in self.children:
            if child.writer is None:
                continue
            try:
                os.write(child.writer.fileno(), data)
            except OSError:  # a full pipe (wake-ups the child has yet to read) or a child gone (`_exited`)
                pass

    # -- stopping -------------------------------------------------------------------------
    async def stop(self, grace: float = 10.0) -> None:
        """Close every pipe (each child stops, finishing its attempts within its own grace),
        wait up to `grace` seconds, then SIGKILL what is left (its leases expire)."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        live = [c for c in self.children if c.process is not None and c.process.exitcode is None]
        for child in self.children:
            if child.restart is not None:
                child.restart.cancel()
            if child.process is not None:
                loop.remove_reader(child.process.sentinel)
            self._close_pipe(child)
        deadline = time.monotonic() + grace
        while any(c.process.exitcode is None for c in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for child in live:
            if child.process.exitcode is None:
                log.warning("delivery process %d (pid %d) did not stop within %.0f s: killed (its leases expire)",
                            child.index, child.process.pid, grace)
                child.process.kill()
            child.process.join(1)


# -- the child ------------------------------------------------------------------------------


def run_child(config: "GatewayConfig", wake: Connection, index: int) -> None:
    """A delivery process's main: run a worker until the parent closes the pipe or SIGTERM."""
    from gateway.logs import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.setswitchinterval(SWITCH_INTERVAL)
    configure_logging(fmt=config.log.format, level=config.log.level, secrets=config.secret_strings())
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve_deliveries(config, wake, index))


async def _serve_deliveries(config: "GatewayConfig", wake: Connection, index: int) -> None:
    from gateway.events.fanout import fanout_for
    from gateway.store import StoreError, open_store_for
    from gateway.webhooks.worker import DeliveryWorker, WorkerSettings

    loop = asyncio.get_running_loop()
    store = open_store_for(config.store)
    worker = DeliveryWorker(store, config.webhooks, config.secret_values(),
                            settings=WorkerSettings.from_config(config.delivery))
    store.set_fanout(fanout_for(config.webhooks), worker.wake)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    fd = wake.fileno()
    os.set_blocking(fd, False)
    refreshes: set[asyncio.Task[None]] = set()

    async def refresh() -> None:
        try:
            await worker.refresh_health()
        except StoreError as exc:
            log.warning("delivery process %d could not re-read endpoint health: %s", index, exc)
        worker.wake()

    def on_wake() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the parent closed the pipe, or died
            loop.remove_reader(fd)
            stop.set()
            return
        if b"h" in data:
            task = asyncio.ensure_future(refresh())
            refreshes.add(task)
            task.add_done_callback(refreshes.discard)
        worker.wake()

    try:
        await store.open()
        await worker.start()
    except StoreError as exc:
        log.error("delivery process %d cannot start: %s", index, exc)
        raise SystemExit(1) from None
    loop.add_reader(fd, on_wake)
    log.info("delivery process %d ready (pid %d): %d subscriptions", index, os.getpid(), len(config.webhooks))
    await stop.wait()
    await worker.stop()
    await store.close()
    log.info("delivery process %d stopped", index)
