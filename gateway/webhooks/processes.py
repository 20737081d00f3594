"""Delivery processes: webhook attempts made in separate processes, so that the gateway's own
process keeps its core for callbacks, media, the store and the API.

With `delivery.processes: N` (N >= 1), `gateway serve` starts N child processes (multiprocessing
`spawn`: fresh interpreters that get the config and nothing else). The gateway's delivery worker
still does all the bookkeeping: it leases rows (as they are written, or by claiming), keeps the
per-endpoint limits and order, and records every attempt in the store's group commits. What it
hands a child is the attempt itself: render, sign, send, read the answer and decide the row's
next step (`AttemptMaker`, the same code the worker runs without children). So the children
never write to the store, and the store keeps one writer: two processes writing to one SQLite
file would each need their own commits and fsyncs, and wait on each other's write lock. A child
reads the store only for the call record a template uses.

The parent and each child talk over one socket pair (`gateway.ipc.FrameChannel`): `(token,
Delivery)` pairs going out, `(token, DeliveryResult)` pairs coming back, everything queued in one
turn of either side's event loop in one frame.

A child whose pipe reaches end-of-file has lost its parent (a clean stop, after the worker let
its attempts finish, or `kill -9` of the gateway): it exits. Signals do not stop a child (a
terminal's Ctrl-C or systemd's SIGTERM reach the whole group): it stays while the gateway
drains, and ends with it. A child that exits while the gateway runs is logged and started again
(after 1 s, doubling up to 30 s while it keeps failing within a minute of its start); the
attempts it had are due again at once (`AttemptLost`), and while no child is up the worker makes
its attempts itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from gateway.heap import settle_heap
from gateway.ipc import ChildProcess, FrameChannel
from gateway.webhooks.attempts import AttemptCrashed, AttemptLost

if TYPE_CHECKING:  # the child imports the heavy modules itself, after setting up its logging
    from gateway.config import GatewayConfig
    from gateway.store.base import Delivery, DeliveryResult

log = logging.getLogger("gateway.webhooks")


def _lost(index: int) -> Callable[[str], AttemptLost]:
    """The error of an attempt that delivery process `index` took and did not answer."""
    return lambda why: AttemptLost(f"delivery process {index} ended before it answered ({why})")


class DeliveryProcesses:
    """The parent's side: starts, feeds and stops the delivery processes."""

    def __init__(self, config: GatewayConfig, count: int) -> None:
        self.config = config
        self.children = [
            ChildProcess(
                f"delivery process {index}",
                run_child,
                (config, index),
                lost=_lost(index),
            )
            for index in range(count)
        ]
        self._turn = itertools.cycle(range(count))
        self.subscriptions = [subscription.name for subscription in config.webhooks]

    @property
    def pids(self) -> list[int]:
        """The live children's process ids."""
        return [pid for child in self.children if (pid := child.pid) is not None]

    async def start(self) -> None:
        for child in self.children:
            child.start()
        log.info("started %d delivery processes: pids %s", len(self.children), ", ".join(map(str, self.pids)))

    def attempt_or_here(
        self, here: Callable[[Delivery], Awaitable[DeliveryResult]]
    ) -> Callable[[Delivery], Awaitable[DeliveryResult]]:
        """The worker's remote attempts: made by the next delivery process that is up, in turn
        (`AttemptLost` if it ends before it answers), or by `here` (the worker's own
        `AttemptMaker`) while none is up, between a crash and its restart."""

        async def make(delivery: Delivery) -> DeliveryResult:
            for _ in self.children:
                child = self.children[next(self._turn)]
                if child.up:
                    answer: DeliveryResult | BaseException = await child.request(delivery)  # what run_child sends
                    if isinstance(answer, BaseException):
                        raise answer
                    return answer
            return await here(delivery)

        return make

    async def stop(self, grace: float = 10.0) -> None:
        """Close every pipe (each child exits), wait up to `grace` seconds, then SIGKILL what
        is left. Stop the worker first: attempts still out come back as `AttemptLost`."""
        await asyncio.gather(*(child.stop(grace) for child in self.children))


# -- the child ------------------------------------------------------------------------------


def run_child(config: GatewayConfig, index: int, conn: Connection) -> None:
    """A delivery process's main: make the attempts the parent sends until its pipe closes."""
    from gateway.logs import configure_logging

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the parent decides; its pipe closing ends this process
    configure_logging(fmt=config.log.format, level=config.log.level, secrets=config.secret_strings())
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve_attempts(config, conn, index))


async def _serve_attempts(config: GatewayConfig, conn: Connection, index: int) -> None:
    from gateway.store import StoreError, open_store_for
    from gateway.webhooks.attempts import AttemptMaker

    loop = asyncio.get_running_loop()
    store = open_store_for(config.store, writer_process=False)  # only to read the call a template uses
    attempts = AttemptMaker(store, config.secret_values())
    for subscription in config.webhooks:
        attempts.add(subscription)
    closed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    channel: FrameChannel | None = None

    async def make(token: int, delivery: Delivery) -> None:
        try:
            result: Any = await attempts.make(delivery)
        except Exception as exc:
            log.exception("delivery %s crashed in delivery process %d", delivery.id, index)
            result = AttemptCrashed(
                f"the attempt crashed in delivery process {index} ({type(exc).__name__}; see the log)"
            )
        if channel is not None:
            channel.send((token, result))

    def unsendable(item: tuple[int, Any], exc: BaseException) -> tuple[int, Any]:
        """A result that cannot be pickled goes back as a crash: recorded by the parent as a
        failed attempt, retried by the schedule (not made again at once, and again, forever)."""
        log.error("delivery process %d: an attempt's result could not be sent back: %s", index, type(exc).__name__)
        return item[0], AttemptCrashed(
            f"the attempt's result could not be sent back from delivery process {index} ({type(exc).__name__})"
        )

    def take(items: list[tuple[int, Delivery]]) -> None:
        for token, delivery in items:
            task = asyncio.ensure_future(make(token, delivery))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    try:
        await store.open()
    except StoreError as exc:
        log.error("delivery process %d cannot start: %s", index, exc)
        raise SystemExit(1) from None
    channel = FrameChannel(loop, conn.fileno(), take, closed.set, unsendable=unsendable)
    settle_heap()
    log.info("delivery process %d ready (pid %d): %d subscriptions", index, os.getpid(), len(config.webhooks))
    await closed.wait()  # the parent closed the pipe, or died
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await attempts.aclose()
    await store.close()
    log.info("delivery process %d stopped", index)
    sys.stdout.flush()
