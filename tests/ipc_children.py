"""Targets of the child processes started by tests/test_ipc.py. They live in their own module,
imported as `ipc_children` (pytest's `pythonpath = ["tests"]`), because a spawned interpreter
imports a target by module name: `tests.test_ipc` (the name importlib mode gives the test
module) is only importable when pytest runs from the repository root."""

from __future__ import annotations

import os
import time

from gateway.ipc import serve_frames


def echo_child(conn) -> None:
    serve_frames(conn, lambda items: [(token, ("echo", payload)) for token, payload in items])


def moody_child(conn) -> None:
    """Echoes, but exits with code 3 on "die" and hangs (ignoring end-of-file) on "hang"."""
    def handle(items):
        for _, payload in items:
            if payload == "die":
                os._exit(3)
            if payload == "hang":
                time.sleep(60)
        return [(token, ("echo", payload)) for token, payload in items]
    serve_frames(conn, handle)


def last_words_child(conn) -> None:
    """Answers its first frame, then exits at once: the answer is in the pipe when it ends."""
    from gateway.ipc import FrameReader, frame

    os.set_blocking(conn.fileno(), True)
    reader = FrameReader()
    while True:
        frames = reader.feed(os.read(conn.fileno(), 1 << 20))
        if frames:
            import pickle

            items = [item for payload in frames for item in pickle.loads(payload)]
            os.write(conn.fileno(), frame([(token, ("last", payload)) for token, payload in items]))
            os._exit(0)


def writer_dying_after_commit(setup, conn) -> None:
    """The store's writer process, except that the first time a group it commits holds a
    `setup["die_after"]` transaction, it dies right after the COMMIT, before answering (a marker
    file next to the database says it did: the writer started again does not die again)."""
    from pathlib import Path

    from gateway.store.sqlite import SQLiteStore
    from gateway.store.writer_process import _run

    marker = Path(setup["path"] + ".died")
    store = SQLiteStore(setup["path"], synchronous=setup["synchronous"])
    store.open_here()
    rooms: dict = {}

    def handle(requests):
        answers = _run(store, rooms, requests)
        if not marker.exists() and any(payload[0] == setup["die_after"] for _, payload in requests):
            marker.touch()
            os._exit(9)
        return answers

    serve_frames(conn, handle)
