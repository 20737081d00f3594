"""Node.js as an independent oracle: JavaScript's own `JSON.stringify`, and a receiver that
checks `x-dialgen-signature` exactly as Dialgen's documented Node example does."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
NODE = shutil.which("node") or shutil.which("nodejs")
if NODE is None:  # .ci/run installs it; a machine without it cannot check against JavaScript
    raise RuntimeError("these tests need Node.js (`node`): `.ci/run` installs Debian's nodejs")


class Stringify:
    """One Node process answering `JSON.stringify(JSON.parse(line))` for each line sent."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([NODE, str(HERE / "stringify.js")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, encoding="utf-8")

    def __call__(self, text: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().rstrip("\n")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


class DialgenReceiver:
    """The Node receiver of Dialgen's documentation on 127.0.0.1 (see dialgen_receiver.js)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([NODE, str(HERE / "dialgen_receiver.js")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, encoding="utf-8")
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        assert first[:1] == ["listening"], first
        self.url = f"http://127.0.0.1:{first[1]}"
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.requests: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def set_secret(self, secret: str) -> None:
        """From now on requests are checked with `secret` (before: 503, so they are retried)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(secret + "\n")
        self.proc.stdin.flush()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The first `count` requests checked (each `{path, valid, body, raw, headers}`)."""
        while len(self.requests) < count:
            self.requests.append(self.lines.get(timeout=timeout))
        return self.requests[:count]

    def __enter__(self) -> "DialgenReceiver":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
