"""A voice agent for benchmarks: a WebSocket server that plays every caller frame straight back.

Run by hand:  .venv/bin/python bench/echo_agent.py --port 9100 [--seconds 600]

Speaks the agent protocol (docs/agent-protocol.md) just enough: takes `start`, echoes every
binary frame, closes on `stop`. It runs websockets' sans-I/O server protocol straight on an
asyncio transport (no task per connection, no per-message futures), because on a small
machine the agent shares the CPU with the gateway it is measuring. Only listens on 127.0.0.1
and exits by itself after `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN
from websockets.server import ServerProtocol


class EchoAgent(asyncio.Protocol):
    """One agent connection: the handshake, then every binary message sent back as it came."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.protocol = ServerProtocol(max_size=1 << 20)

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Request):
                protocol.send_response(protocol.accept(event))
            elif isinstance(event, Frame) and protocol.state is OPEN:
                if event.opcode is Opcode.BINARY:
                    protocol.send_binary(event.data)
                elif event.opcode is Opcode.TEXT and b'"stop"' in event.data:
                    protocol.send_close(1000)
        for chunk in protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.close()
        if protocol.close_expected():
            asyncio.get_running_loop().call_later(2, self.transport.close)

    def eof_received(self) -> None:
        self.protocol.receive_eof()


async def main(port: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(EchoAgent, "127.0.0.1", port)
    print(f"echo agent on ws://127.0.0.1:{port}", flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop, seconds)
    server.close()


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
