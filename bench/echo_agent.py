"""A voice agent for benchmarks: a WebSocket server that plays every caller frame straight back.

Run by hand:  .venv/bin/python bench/echo_agent.py --port 9100 [--seconds 600]

Speaks the agent protocol (docs/agent-protocol.md) just enough: reads `start`, echoes every
binary frame, closes on `stop`. Only listens on 127.0.0.1 and exits by itself after `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def handle(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            if isinstance(message, bytes):
                await ws.send(message)
            elif '"stop"' in message:
                return


async def main(port: int, seconds: float) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(handle, "127.0.0.1", port, compression=None, max_size=1 << 20, ping_interval=None):
        print(f"echo agent on ws://127.0.0.1:{port}", flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop, seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=600, help="exit after this long (default 600)")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.port, args.seconds))
    else:
        uvloop.run(main(args.port, args.seconds))
