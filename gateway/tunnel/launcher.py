"""`gateway tunnel`: start a cloudflared quick tunnel to the local gateway.

The command is `cloudflared tunnel --url http://localhost:PORT --metrics 127.0.0.1:20241`;
its metrics server is where a gateway with `public_url: auto` reads the tunnel's hostname.
With `tunnel.log_file` set, cloudflared's stderr is copied there too (the log-line fallback).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

DEFAULT_METRICS = "127.0.0.1:20241"

INSTALL_HINT = """\
cloudflared is not installed (not found on PATH). Install it, then run this again:
  macOS:          brew install cloudflared
  Debian/Ubuntu:  add Cloudflare's apt repository (https://pkg.cloudflare.com/), then apt-get install cloudflared
  Windows:        winget install --id Cloudflare.cloudflared
  anything else:  https://developers.cloudflare.com/cloudflare-one/connections/connect-networks/downloads/
Or run the gateway and cloudflared together in containers: docker compose -f deploy/docker-compose.yml up
"""


def quick_tunnel_command(binary: str, port: int, metrics: str = DEFAULT_METRICS) -> list[str]:
    """The argv of a quick tunnel to `http://localhost:PORT` with its metrics server at `metrics`."""
    return [binary, "tunnel", "--url", f"http://localhost:{port}", "--metrics", metrics]


def find_cloudflared(path: str | None = None) -> str | None:
    """The cloudflared executable on PATH (or on `path`), or None."""
    return shutil.which("cloudflared", path=path)


def _copy_lines(source: IO[bytes], sinks: list[IO[bytes]]) -> None:
    for line in iter(source.readline, b""):
        for sink in sinks:
            sink.write(line)
            sink.flush()


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Give cloudflared a moment to finish on its own (the terminal signalled it too), then end it."""
    for grace, end in ((1.0, process.terminate), (10.0, process.kill)):
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            end()
    return process.wait()


def run_quick_tunnel(command: list[str], log_file: str | None = None) -> int:
    """Run cloudflared in the foreground until it exits; its exit code.

    stdout and stderr go to this terminal; with `log_file`, stderr is appended there as well.
    Ctrl-C or SIGTERM stops cloudflared too.
    """
    with contextlib.ExitStack() as stack:
        sink: IO[bytes] | None = None
        if log_file is not None:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(open(log_file, "ab"))  # closed after the copying thread is done
        process = subprocess.Popen(command, stderr=subprocess.PIPE if sink else None)
        pump = None
        if sink is not None:
            assert process.stderr is not None
            pump = threading.Thread(target=_copy_lines, args=(process.stderr, [sys.stderr.buffer, sink]), daemon=True)
            pump.start()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: process.terminate())
        try:
            code = process.wait()
        except KeyboardInterrupt:
            code = _stop(process)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if pump is not None:
            pump.join(timeout=5)
        return code
