"""Per-frame CPU of the agent link's WebSocket client: the gateway's `AgentSocket` (websockets'
sans-I/O protocol with a fast path, push mode) against a picows client, under the same load.

An echo server (picows, its own process) answers every binary message; this process opens
`--calls` connections with the client under test, each sending one 640-byte frame (20 ms of
PCM16 16 kHz) every 20 ms and taking the echo by callback, for `--seconds`. It reports this
process's CPU (user + system) per frame round trip (one send, one receive), which is what the
client costs the gateway, less the driver's own cost per frame (a client with no socket). The clients alternate `--rounds` times so drift in the machine's
load hits both alike.

    .venv/bin/python bench/agent_socket.py --calls 100 --seconds 8 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

FRAME = b"\x01\x02" * 320


def _echo_server(port: int, ready: Any) -> None:
    import picows

    class Echo(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == picows.WSMsgType.BINARY:
                transport.send(picows.WSMsgType.BINARY, frame.get_payload_as_bytes())
            elif frame.msg_type == picows.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    async def main() -> None:
        server = await picows.ws_create_server(lambda request: Echo(), "127.0.0.1", port)
        ready.set()
        await server.serve_forever()

    _use_uvloop()
    asyncio.run(main())


def _use_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Counter:
    received = 0


async def _agent_socket_client(url: str, counter: _Counter) -> tuple[Callable[[bytes], None], Callable[[], Any]]:
    from gateway.media.agent_socket import AgentSocket

    socket = AgentSocket(url, max_size=1 << 20, ping_interval=20, ping_timeout=20, close_timeout=2)
    await socket.open({}, timeout=5, user_agent="bench")

    def on_message(message: bytes | str) -> None:
        counter.received += 1

    socket.listen(on_message, lambda reason: None)
    return socket.send_bytes, socket.close


async def _picows_client(url: str, counter: _Counter) -> tuple[Callable[[bytes], None], Callable[[], Any]]:
    import picows

    binary = picows.WSMsgType.BINARY

    class Client(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == binary:
                frame.get_payload_as_bytes()  # what the session would be handed
                counter.received += 1

    transport, _ = await picows.ws_connect(Client, url, enable_auto_ping=True, auto_ping_idle_timeout=20)

    def send(data: bytes) -> None:
        transport.send(binary, data)

    async def close() -> None:
        transport.send_close(picows.WSCloseCode.OK)
        transport.disconnect()

    return send, close


async def _null_client(url: str, counter: _Counter) -> tuple[Callable[[bytes], None], Callable[[], Any]]:
    """No socket: the driver's own cost per frame (its timer), to take off the others'."""

    def send(data: bytes) -> None:
        counter.received += 1

    async def close() -> None:
        return None

    return send, close


CLIENTS = {"agent_socket": _agent_socket_client, "picows": _picows_client, "none": _null_client}


async def _run(kind: str, url: str, calls: int, seconds: float) -> tuple[float, int, int]:
    counter = _Counter()
    links = [await CLIENTS[kind](url, counter) for _ in range(calls)]
    loop = asyncio.get_running_loop()
    sent = 0
    stop = loop.time() + seconds

    def tick(index: int) -> None:
        nonlocal sent
        if loop.time() >= stop:
            return
        links[index][0](FRAME)
        sent += 1
        loop.call_later(0.02, tick, index)

    await asyncio.sleep(0.5)  # settle after connecting
    cpu0, received0 = _cpu(), counter.received
    for i in range(calls):
        loop.call_later(0.02 * i / calls, tick, i)
    await asyncio.sleep(seconds + 0.3)
    cpu = _cpu() - cpu0
    received = counter.received - received0
    for _, close in links:
        await close()
    return cpu, sent, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = 20000 + os.getpid() % 20000
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=_echo_server, args=(port, ready), daemon=True)
    server.start()
    ready.wait(10)
    url = f"ws://127.0.0.1:{port}/"
    _use_uvloop()
    results: dict[str, list[float]] = {kind: [] for kind in CLIENTS}
    try:
        for _ in range(args.rounds):
            for kind in CLIENTS:
                cpu, sent, received = asyncio.run(_run(kind, url, args.calls, args.seconds))
                per_frame = cpu / max(received, 1) * 1e6
                results[kind].append(per_frame)
                print(
                    f"{kind:13s} calls={args.calls} sent={sent} received={received} "
                    f"cpu={cpu:.2f}s ({cpu / args.seconds * 100:.1f}% of a core) {per_frame:.1f} us/frame",
                    flush=True,
                )
    finally:
        server.terminate()
    for kind, values in results.items():
        print(f"{kind:13s} median {statistics.median(values):.1f} us per frame round trip (send + receive)")
    base = statistics.median(results["none"])
    own = {kind: statistics.median(values) - base for kind, values in results.items() if kind != "none"}
    print(f"the client alone (less the driver's {base:.1f} us): " + ", ".join(f"{k} {v:.1f} us" for k, v in own.items()))
    ratio = own["picows"] / own["agent_socket"]
    print(f"picows / agent_socket: {ratio:.2f}  (load: {os.getloadavg()[0]:.2f}, {time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    main()
