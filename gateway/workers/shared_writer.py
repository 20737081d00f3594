"""The SQLite writer process every worker shares (`gateway serve --workers N` on SQLite).

It is `gateway.store.writer_process`'s writer, serving a Unix socket instead of one pipe: each
worker connects (again, after it was restarted) and sends the transactions every callback and
delivery makes. One thread, no event loop: it waits for requests on any connection, then runs
each connection's requests as one group commit (one transaction, one fsync) and answers them.
A group is per worker because the rows it leases go to that worker's delivery worker (its owner
id and its room); all workers' groups of a round are written back to back.

The parent binds the socket and keeps it across a restart of this process, so a worker that
connects while it restarts waits in the backlog instead of failing. It exits when its parent
does (checked every second) or sends SIGUSR1 (every worker has stopped). The requests are pickled
as between the gateway and its other children: the socket is in a directory only the gateway's
user can enter (mode 0700), so only the gateway's own processes connect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

from gateway.events.fanout import EventFanout
from gateway.heap import settle_heap
from gateway.ipc import READ_SIZE, FrameReader, frame
from gateway.store.base import DirectDispatch
from gateway.store.sqlite import SQLiteStore
from gateway.store.writer_process import _run

log = logging.getLogger("gateway.store")

SEND_TIMEOUT = 30.0  # seconds an answer may wait for a worker to read it
HELLO = -1
"""The token of the first item on a connection: `(HELLO, the writer's pid)`, sent when this process
accepts it. A worker connected while no writer runs (into the backlog of the socket the parent
keeps) writes itself until then, instead of waiting for a writer that may be a while coming."""


@dataclass
class _Worker:
    """One worker's connection: what it has sent, and how its rows are fanned out and leased."""

    sock: socket.socket
    reader: FrameReader = field(default_factory=FrameReader)
    rooms: dict[str, int] = field(default_factory=dict)
    fanout: Any = None
    dispatch: DirectDispatch | None = None

    def route(self, routing: Any) -> None:
        """Fan out and lease as the worker's store would: `routing` is (routes, owner, lease seconds)."""
        routes, owner, lease_seconds = routing
        rooms = self.rooms
        self.fanout = EventFanout(routes)
        self.dispatch = (
            DirectDispatch(
                owner=owner,
                lease_seconds=lease_seconds,
                room=lambda name: rooms.get(name, 0),
                deliver=lambda rows: None,
            )
            if owner
            else None
        )


def run_shared_writer(setup: dict[str, Any], listener: socket.socket) -> None:
    """The writer process's main (multiprocessing spawn): serve every worker until the parent
    says stop (SIGUSR1) or ends."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the parent decides: SIGUSR1 once every worker has stopped
    stop: list[int] = []
    signal.signal(signal.SIGUSR1, lambda sig, frame: stop.append(sig))
    parent = os.getppid()
    store = SQLiteStore(setup["path"], synchronous=setup["synchronous"])
    store.open_here()
    settle_heap()
    selector = selectors.DefaultSelector()
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, None)
    while not stop and os.getppid() == parent:
        ready: list[tuple[_Worker, list[tuple[int, Any]]]] = []
        for key, _ in selector.select(timeout=1.0):
            if key.data is None:
                _accept(selector, listener)
                continue
            worker: _Worker = key.data
            items = _read(worker)
            if items is None:
                selector.unregister(worker.sock)
                worker.sock.close()
            elif items:
                ready.append((worker, items))
        for worker, items in ready:
            _answer(worker, _serve(store, worker, items))
    store.close_here()
    os._exit(0)


def _accept(selector: selectors.BaseSelector, listener: socket.socket) -> None:
    try:
        sock, _ = listener.accept()
    except BlockingIOError:
        return
    sock.settimeout(SEND_TIMEOUT)  # blocking, but a worker that stops reading cannot hold every other one
    try:
        sock.sendall(frame([(HELLO, os.getpid())]))  # the worker forwards only once this arrives
    except OSError:
        sock.close()
        return
    selector.register(sock, selectors.EVENT_READ, _Worker(sock))


def _read(worker: _Worker) -> list[tuple[int, Any]] | None:
    """The requests that arrived from `worker` ([] for a partial frame), or None when it is gone."""
    import pickle

    try:
        data = worker.sock.recv(READ_SIZE)
    except OSError:
        return None
    if not data:
        return None
    return [item for payload in worker.reader.feed(data) for item in pickle.loads(payload)]


def _serve(store: SQLiteStore, worker: _Worker, items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Run one worker's requests, `SQLiteStore.MAX_GROUP` to a group commit, with its routing."""
    requests = []
    for token, (method, args, kwargs, room, routing) in items:
        if routing is not None:
            worker.route(routing)
        requests.append((token, (method, args, kwargs, room, None)))
    if worker.fanout is not None:
        store.set_fanout(worker.fanout)
    store.set_dispatch(worker.dispatch)
    answers: list[tuple[int, Any]] = []
    for start in range(0, len(requests), SQLiteStore.MAX_GROUP):
        answers += _run(store, worker.rooms, requests[start : start + SQLiteStore.MAX_GROUP])
    return answers


def _answer(worker: _Worker, answers: list[tuple[int, Any]]) -> None:
    if not answers:
        return
    try:
        worker.sock.sendall(frame(answers))
    except OSError:  # gone, or not reading: cut it off (it connects again); the selector sees it closed next
        with contextlib.suppress(OSError):
            worker.sock.shutdown(socket.SHUT_RDWR)
