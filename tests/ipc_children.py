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
