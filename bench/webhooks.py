"""End-to-end webhook throughput and latency: signed Twilio status callbacks into `gateway serve`,
signed deliveries out to a local receiver that verifies every signature.

Run by hand (every phase is bounded in count and time and stops by itself):

    .venv/bin/python bench/webhooks.py                          # 250..2000 ev/s, 12 s each
    .venv/bin/python bench/webhooks.py --rates 500 --duration 10 --store 'sqlite?synchronous=normal'
    .venv/bin/python bench/webhooks.py --ceiling --rates ''     # only the gateway's own ceiling
    .venv/bin/python bench/webhooks.py --generator-ceiling      # the load generator's own ceiling
    .venv/bin/python bench/webhooks.py --rates 1500 --profile /tmp/prof   # py-spy on the gateway
    .venv/bin/python bench/webhooks.py --reference --rates 500,1500 --ceiling   # the bare relay
    .venv/bin/python bench/webhooks.py --rates 500,1000,1500 --ceiling --store 'sqlite?writer=process' \
        --set delivery.processes=1 --set delivery.concurrency=128   # the gateway on both cores
    .venv/bin/python bench/webhooks.py --rates 500 --events /tmp/events   # each callback's times, as CSV

Three kinds of process, so that none of them shares an event loop with another:

* the gateway: one (or, with `--instances N`, N) real `gateway serve` processes, sharing the
  store named by `--store` (default: a fresh SQLite file per rate), with one webhook
  subscription for `call.*` signed with a `whsec_` secret, pointed at the receiver;
* or, with `--reference`, the bare relay (`_relay` role) in the gateway's place: Starlette on
  the same uvicorn stack, form in, 204 out, a signed POST to the receiver; no check, no store.
  The reference the gateway's numbers are ratios against;
* the receiver (`_receiver` role): a bare asyncio protocol on uvloop with a minimal HTTP/1.1
  reader (Content-Length bodies, keep-alive, pipelining). It verifies every delivery with the
  `standardwebhooks` package as it arrives, and records (workflow_run_id, event type,
  webhook-id, receipt time). A bad signature is answered 400 and counted;
* the load generator (`_loadgen` role): pre-builds every Twilio-signed status callback
  (`CallStatus=ringing` for a fresh run id each, so exactly one `call.ringing` event each)
  before the timed window, then sends them open-loop at a fixed rate (request i is due at
  t0 + i/rate; what falls due in one 2 ms tick goes out together) over persistent HTTP/1.1
  keep-alive connections, one request at a time each (bare asyncio protocols), or closed-loop
  as fast as the connections allow (`--ceiling`).

The harness shares the 2-core machine with what it measures, so it is kept lean: the receiver
and generator were uvicorn and asyncio streams until 2026-12-06, and the generator's scheduling
loop spun (a sub-millisecond `asyncio.sleep` returns at once on uvloop): together they took
70-110 % of a core at 1,500 ev/s, against ~30 % now (generator ceiling: ~13,000 against ~50,000
requests/s).

Per rate it reports: callbacks acknowledged (204) per second, events received per second,
end-to-end latency (receipt time - callback send time, same machine clock) p50/p99/max, and
the same measured from the *scheduled* send time (which also counts time a callback waited
for a free connection, so an overloaded gateway cannot hide behind a slow generator), lost
(acknowledged but never received within the drain timeout), duplicated (a webhook-id
received more than once) and CPU of the gateway, receiver and generator (100 % = one core).

`--instances N` starts N gateways sharing the store named by `--store` (PostgreSQL; one SQLite
file works too, as an experiment: a deployment runs one gateway per SQLite file and adds
`delivery.processes`); the generator spreads its connections round-robin over them. A gateway's
delivery processes (`--set delivery.processes=2`) count as the gateway's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

TWILIO_TOKEN = "bench-twilio-auth-token"
TWILIO_SID = "AC" + "b" * 32
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- small helpers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its threads, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (a gateway's delivery processes), from /proc."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                found = [int(x) for x in Path(f"/proc/{parent}/task/{task}/children").read_text().split()]
            except OSError:
                continue
            out += found
            todo += found
    return out


def system_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all cores, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return float(sum(parts) - idle), float(sum(parts))


class CpuSampler:
    """Samples the CPU seconds of named pids (and the whole machine) every `period` seconds,
    so the CPU of any wall-clock window can be read afterwards. A named pid's descendants
    (the gateway's delivery processes) count as that name, including ones that exited."""

    def __init__(self, pids: dict[str, list[int]], period: float = 0.2) -> None:
        self.pids = pids
        self.period = period
        self.samples: list[tuple[float, dict[str, float], tuple[float, float]]] = []
        self._last: dict[int, float] = {}  # a process that exited keeps its last reading
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _cpu(self, pid: int) -> float:
        value = max(proc_cpu_seconds(pid), self._last.get(pid, 0.0))
        self._last[pid] = value
        return value

    def _sample(self) -> None:
        for pids in list(self.pids.values()):
            for pid in list(pids):
                pids.extend(child for child in descendants(pid) if child not in pids)
        cpu = {name: sum(self._cpu(p) for p in list(pids)) for name, pids in list(self.pids.items())}
        self.samples.append((time.time(), cpu, system_busy()))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def window(self, start: float, end: float) -> dict[str, float]:
        """CPU % (100 = one core) of each name over [start, end]; `system` is all cores busy %."""
        inside = [s for s in self.samples if start - self.period <= s[0] <= end + self.period]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        span = last[0] - first[0]
        if span <= 0:
            return {}
        out = {name: 100.0 * (last[1][name] - first[1][name]) / span for name in self.pids}
        busy = last[2][0] - first[2][0]
        total = last[2][1] - first[2][1]
        out["system"] = 100.0 * busy / total * (os.cpu_count() or 1) if total else float("nan")
        out["others"] = out["system"] - sum(out[name] for name in self.pids)  # machine noise
        out["seconds"] = span
        return out


# --- receiver role -----------------------------------------------------------------------------


class MessageReader:
    """Splits a byte stream into HTTP/1.1 messages, for the harness's own minimal servers and
    clients: `feed` returns (head, body) of each complete one. A body is framed by
    Content-Length, or by chunked encoding (kept as sent, not decoded), or is empty."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return out
            lower = self.buffer[:end].lower()
            at = lower.find(b"\r\ncontent-length:")
            if at != -1:
                stop = lower.find(b"\r\n", at + 2)
                last = end + 4 + int(lower[at + 17:stop if stop != -1 else end])
            elif b"\r\ntransfer-encoding: chunked" in lower:
                stop = self.buffer.find(b"\r\n0\r\n\r\n", end)
                if stop < 0:
                    return out
                last = stop + 7
            else:
                last = end + 4
            if len(self.buffer) < last:
                return out
            out.append((self.buffer[:end], self.buffer[end + 4:last]))
            self.buffer = self.buffer[last:]


def _request(head: bytes, body: bytes) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path, headers with lower-case names, body) of a request; ValueError for a
    chunked one (all the gateway's HTTP client and httpx send here use Content-Length)."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        raise ValueError("chunked request bodies are not expected here")
    return method, target.split("?", 1)[0], headers, body


def _status(head: bytes) -> tuple[int, bool]:
    """(status, keep-alive) of a response head."""
    return int(head[9:12]), b"\r\nconnection: close" not in head.lower()


def _response(status: int, body: bytes = b"", ctype: str = "application/json") -> bytes:
    reason = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n"
    if body:
        head += f"content-type: {ctype}\r\n"
    return (head + "\r\n").encode("latin-1") + body


def receiver_main(args: argparse.Namespace) -> None:
    """A cheap receiver: a bare asyncio protocol on uvloop (no HTTP framework, so that as
    little as possible of the shared machine goes to the harness); verifies every signature
    with the `standardwebhooks` package as each delivery arrives, and answers 400 to a bad one."""
    import uvloop
    from standardwebhooks import Webhook, WebhookVerificationError

    verifier = Webhook(args.secret)
    records: list[tuple[str, str, str, float, str]] = []
    state = {"bad": 0, "errors": 0}
    sink = args.sink
    ok = _response(200)

    def handle(method: str, path: str, headers: dict[str, str], body: bytes, received_at: float) -> bytes:
        if path.startswith("/_bench/"):
            if path == "/_bench/stats":
                data: dict[str, Any] = {"received": len(records), **state}
            elif path == "/_bench/dump":
                data = {"records": records, **state}
            else:
                data = {}
            return _response(200, json.dumps(data, separators=(",", ":")).encode())
        if sink:  # generator-ceiling mode: answer like the gateway does, nothing else
            return _response(204)
        try:
            payload = verifier.verify(body, headers)
        except WebhookVerificationError:
            state["bad"] += 1
            return _response(400, b'{"error":"bad signature"}')
        except Exception:  # noqa: BLE001 - count and answer, never crash the receiver
            state["errors"] += 1
            return _response(400, b'{"error":"unreadable"}')
        records.append((payload.get("workflow_run_id") or "", payload.get("type") or "", headers["webhook-id"],
                        received_at, path))
        return ok

    class Receiving(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.reader = MessageReader()
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def data_received(self, data: bytes) -> None:
            received_at = time.time()
            try:
                requests = [_request(head, body) for head, body in self.reader.feed(data)]
            except ValueError:
                state["errors"] += 1
                self.transport.write(_response(400))
                self.transport.close()
                return
            if requests:
                self.transport.write(b"".join(handle(*request, received_at) for request in requests))

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Receiving, "127.0.0.1", args.port, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# --- reference role: a bare relay ---------------------------------------------------------------


def relay_main(args: argparse.Namespace) -> None:
    """The reference (`--reference`): the least any gateway must do per event, nothing more.

    A bare Starlette app on the same uvicorn stack as the gateway: it parses the callback's form,
    answers 204, and in a background task POSTs a Standard-Webhooks-signed JSON envelope to the
    receiver over raw keep-alive HTTP/1.1 connections (no client library). No signature check
    on the way in, no store, no retries, no ordering: an upper bound on what one Python process
    can relay on this machine, measured under the same generator and receiver as the gateway.
    """
    import uvicorn
    from standardwebhooks import Webhook
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    signer = Webhook(args.secret)
    host, port = args.receiver.split("://", 1)[1].rsplit(":", 1)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []  # keep-alive connections
    slots = asyncio.Semaphore(args.concurrency)
    counter = iter(range(1 << 62))

    async def deliver(run_id: str, form: dict[str, str]) -> None:
        now = time.time()
        body = json.dumps({"type": "call.ringing", "timestamp": now, "workflow_run_id": run_id, "data": form},
                          separators=(",", ":"))
        msg_id = f"msg_{os.getpid()}_{next(counter)}"
        when = datetime.datetime.fromtimestamp(int(now), tz=datetime.timezone.utc)
        raw = body.encode()
        head = (f"POST /hooks HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"webhook-id: {msg_id}\r\nwebhook-timestamp: {int(now)}\r\n"
                f"webhook-signature: {signer.sign(msg_id, when, body)}\r\nContent-Length: {len(raw)}\r\n\r\n")
        async with slots:  # at most --concurrency connections to the receiver
            try:
                reader, writer = idle.pop() if idle else await asyncio.open_connection(host, int(port))
                writer.write(head.encode() + raw)
                _, keep = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                return  # counted as lost by the analysis
            if keep:
                idle.append((reader, writer))
            else:
                writer.close()

    async def callback(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("latin-1")))
        return Response(status_code=204, background=BackgroundTask(deliver, request.path_params["run_id"], form))

    async def ready(request: Request) -> Response:
        return Response(b"ok")

    app = Starlette(routes=[Route("/api/v1/telephony/status-callback/{run_id}", callback, methods=["POST"]),
                            Route("/readyz", ready)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, http="httptools", loop="uvloop", log_level="warning",
                access_log=False, backlog=4096, timeout_keep_alive=60)


# --- load generator role ----------------------------------------------------------------------


STEPS = ("ringing", "in-progress", "completed")
"""A call's status callbacks, in order (`--per-call`): call.ringing, call.answered, call.ended."""


def call_step(i: int, per_call: int, gap: int) -> tuple[int, int]:
    """(call, step) of request i when each call gets `per_call` callbacks `gap` requests apart:
    requests come in blocks of `per_call * gap`, the first `gap` of a block the first step of
    `gap` calls, the next `gap` their second step, and so on."""
    if per_call == 1:
        return i, 0
    block, rest = divmod(i, per_call * gap)
    return block * gap + rest % gap, rest // gap


def build_requests(targets: list[str], prefix: str, count: int, token: str, per_call: int = 1,
                   gap: int = 1) -> tuple[list[bytes], list[int]]:
    """Signed status callbacks (see `call_step`); a call's step j goes to target (call + j) % N,
    so that with several gateways its callbacks land on different ones."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(token)
    out: list[bytes] = []
    target_of: list[int] = []
    for i in range(count):
        c, j = call_step(i, per_call, gap)
        t = (c + j) % len(targets)
        base = targets[t]
        host = base.split("://", 1)[1]
        run_id = f"{prefix}-{c}"
        path = f"/api/v1/telephony/status-callback/{run_id}"
        params = {"CallSid": "CA" + f"{prefix}{c:x}".encode().hex()[-32:].rjust(32, "0"), "AccountSid": TWILIO_SID,
                  "CallStatus": STEPS[j], "From": "+15550100", "To": "+15550199", "Direction": "outbound-api"}
        if per_call > 1:
            params["SequenceNumber"] = str(j)
        signature = validator.compute_signature(base + path, params)
        body = urlencode(params).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        out.append(head + body)
        target_of.append(t)
    return out, target_of


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep-alive) of the one HTTP/1.1 response a connection owes; its body is dropped."""
    messages = MessageReader()
    while True:
        data = await reader.read(65536)
        if not data:
            raise asyncio.IncompleteReadError(messages.buffer, None)
        for head, _ in messages.feed(data):
            return _status(head)


async def loadgen_run(args: argparse.Namespace) -> dict[str, Any]:
    """Send the pre-built callbacks: request i is due at t0 + i/rate (closed loop with rate 0),
    each on the next idle keep-alive connection to its target, one request per connection at
    a time. Bare asyncio protocols: a request costs the harness a write and a parse."""
    targets = args.target
    rate = args.rate
    count = args.count if rate == 0 else int(rate * args.duration)
    requests, target_of = build_requests(targets, args.prefix, count, args.token, args.per_call, args.gap)
    sched = [0.0] * count
    sent = [0.0] * count
    done = [0.0] * count
    status = [0] * count
    loop = asyncio.get_running_loop()
    due: list[collections.deque[int]] = [collections.deque() for _ in targets]  # due, not yet sent
    idle: list[list[Sending]] = [[] for _ in targets]
    addrs = [t.split("://", 1)[1].rsplit(":", 1) for t in targets]
    deadline = [float("inf")]
    state = {"open": 0, "answered": 0}

    class Sending(asyncio.Protocol):
        def __init__(self, t: int) -> None:
            self.t = t
            self.reader = MessageReader()
            self.current = -1
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send(self, i: int) -> None:
            self.current = i
            sent[i] = time.time()
            self.transport.write(requests[i])

        def data_received(self, data: bytes) -> None:
            for head, _ in self.reader.feed(data):
                code, keep = _status(head)
                self.answered(code)
                if not keep:
                    self.transport.close()
                    return
            if self.current < 0:
                pump(self)

        def answered(self, code: int) -> None:
            i, self.current = self.current, -1
            if i >= 0:
                done[i] = time.time()
                status[i] = code
                state["answered"] += 1

        def connection_lost(self, exc: Exception | None) -> None:
            if self.current >= 0:
                self.answered(-1)
            if self in idle[self.t]:
                idle[self.t].remove(self)
            state["open"] -= 1
            if time.time() < deadline[0]:
                asyncio.ensure_future(connect(self.t))

    def pump(conn: Sending) -> None:
        """`conn` is free: its next due request, else it waits in the idle list."""
        queue = due[conn.t]
        if queue and time.time() <= deadline[0]:
            conn.send(queue.popleft())
        elif queue:  # past the deadline: what is left was never sent
            queue.clear()
            idle[conn.t].append(conn)
        else:
            idle[conn.t].append(conn)

    async def connect(t: int) -> None:
        host, port = addrs[t]
        _, conn = await loop.create_connection(lambda: Sending(t), host, int(port))
        state["open"] += 1
        pump(conn)

    await asyncio.gather(*(connect(k % len(targets)) for k in range(args.connections)))
    await asyncio.sleep(0.3)  # connections open before the window
    wall0 = time.time() + 0.05
    mono0 = loop.time() + 0.05
    if rate == 0:  # closed loop: every connection busy until the deadline
        deadline[0] = wall0 + args.duration
        await asyncio.sleep(0.05)
        for i in range(count):
            sched[i] = wall0
            due[target_of[i]].append(i)
        for t in range(len(targets)):
            for conn in list(idle[t]):
                idle[t].remove(conn)
                pump(conn)
    else:
        i = 0
        step = 1.0 / rate
        while i < count:
            now = loop.time()
            upto = min(count, int((now - mono0) * rate) + 1) if now >= mono0 else 0
            while i < upto:
                sched[i] = wall0 + i * step
                t = target_of[i]
                due[t].append(i)
                if idle[t]:
                    pump(idle[t].pop())
                i += 1
            # A tick of 2 ms: what fell due in it goes out together (a shorter sleep made the
            # generator's own wake-ups cost more; under 1 ms uvloop rounds it down to none and spins).
            await asyncio.sleep(max(0.002, min(0.004, mono0 + i * step - loop.time())))
        deadline[0] = time.time() + args.duration + 30  # bound the tail: an unanswered callback is an error
    end = time.time() + args.duration + 60
    while time.time() < end:  # until every request sent is answered (and, before the deadline, all are sent)
        issued_now = sum(1 for x in sent if x)
        if state["answered"] >= issued_now and (not any(due) or time.time() > deadline[0]):
            break
        await asyncio.sleep(0.05)
    deadline[0] = 0.0
    for t in range(len(targets)):
        for conn in idle[t]:
            conn.transport.close()
    issued = [i for i in range(count) if sent[i]]
    return {
        "count": count, "issued": len(issued), "rate": rate, "start": wall0,
        "sched": [sched[i] for i in issued], "sent": [sent[i] for i in issued], "done": [done[i] for i in issued],
        "status": [status[i] for i in issued], "index": issued, "prefix": args.prefix,
    }


def loadgen_main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(loadgen_run(args))
    Path(args.out).write_text(json.dumps(result, separators=(",", ":")))


# --- orchestration -----------------------------------------------------------------------------


def _set_dotted(config: dict[str, Any], dotted: str) -> None:
    import yaml

    key, _, raw = dotted.partition("=")
    value = yaml.safe_load(raw)
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def gateway_config(workdir: Path, store: str, receiver_url: str, sets: list[str], subscriptions: int = 1) -> dict[str, Any]:
    config: dict[str, Any] = {
        "store": store,
        "data_dir": str(workdir),
        "api_key": "bench-admin-api-key",
        "secret_key": "bench-secret-key",
        "providers": {"twilio": {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "api_base_url": "http://127.0.0.1:9"}},
        "webhooks": [{
            "name": "bench" if n == 0 else f"bench{n}",
            "events": ["call.*"],
            "url": receiver_url + ("/hooks" if n == 0 else f"/hooks{n}"),
            "signing": {"scheme": "standard", "secrets": [WHSEC]},
            "allow_networks": ["127.0.0.0/8"],
            "timeout": 10,
        } for n in range(subscriptions)],
    }
    for item in sets:
        _set_dotted(config, item)
    return config


def gateway_defaults(root: str | None) -> list[str]:
    """Config the bench needs whatever the gateway version: no per-IP limit on provider
    requests (every callback comes from 127.0.0.1) when that version has one that refuses
    signed callbacks too (since the limit charges only refused requests, the default config)."""
    probe = ("from gateway.config import GatewayConfig as G; f = G.model_fields.get('limits');"
             " from gateway.api.middleware import EdgeMiddleware as E;"
             " print(bool(f and 'provider_requests_per_second' in f.annotation.model_fields and not hasattr(E, 'charge')))")
    env = {**os.environ, **({"PYTHONPATH": root} if root else {})}
    out = subprocess.run([PY, "-c", probe], cwd=root or ROOT, env=env, capture_output=True, text=True, timeout=60)
    return ["limits.provider_requests_per_second=0"] if out.stdout.strip() == "True" else []


def wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str, log: Path | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout} s")


def stop_process(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:  # a gateway draining its (never ended) bench calls: a second signal ends it at once
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (at most `max_wait` s) until the machine is below `limit` % busy (of all cores) over
    2 s, so that a run does not start while other work holds the CPUs. Returns the last level."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = system_busy()
        time.sleep(2)
        b1, t1 = system_busy()
        level = 100.0 * (b1 - b0) / max(1.0, t1 - t0) * (os.cpu_count() or 1)
        if level <= limit or time.monotonic() > deadline:
            return level


class Run:
    """One measured run: fresh store, receiver and gateway(s); one load-generator pass."""

    def __init__(self, args: argparse.Namespace, workdir: Path, label: str, rate: float) -> None:
        self.args = args
        self.workdir = workdir / label
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.label = label
        self.rate = rate
        self.procs: list[subprocess.Popen] = []
        self.pg_schema: str | None = None
        self.gap = max(1, round((rate or 1000) * args.gap_ms / 1000))  # requests between one call's callbacks

    def _spawn(self, argv: list[str], log: Path, gateway_root: str | None = None) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gateway_root:
            env["PYTHONPATH"] = gateway_root
        proc = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=gateway_root or ROOT, env=env)
        self.procs.append(proc)
        return proc

    def execute(self) -> dict[str, Any]:
        try:
            return self._execute()
        finally:
            for proc in reversed(self.procs):
                stop_process(proc)

    def _execute(self) -> dict[str, Any]:
        import httpx
        import yaml

        args = self.args
        rport = free_port()
        receiver_url = f"http://127.0.0.1:{rport}"
        receiver = self._spawn([PY, __file__, "_receiver", "--port", str(rport), "--secret", WHSEC]
                               + (["--sink"] if args.generator_ceiling else []), self.workdir / "receiver.log")
        wait_http(receiver_url + "/_bench/stats", receiver, 20, "receiver", self.workdir / "receiver.log")

        gateways: list[subprocess.Popen] = []
        targets: list[str] = []
        store = args.store
        if args.generator_ceiling:
            targets = [receiver_url]
        else:
            if store == "sqlite" or store.startswith("sqlite?"):
                store = f"sqlite:///{self.workdir}/gateway.db" + store[len("sqlite"):]
            elif store.startswith(("postgresql://", "postgres://")) and "schema=" not in store:
                # a fresh schema per run (dropped afterwards), like a fresh SQLite file
                self.pg_schema = f"bench_{os.getpid()}_{self.label.replace('.', '_')}"
                store += ("&" if "?" in store else "?") + f"schema={self.pg_schema}"
            config = gateway_config(self.workdir, store, receiver_url, gateway_defaults(args.gateway_root) + args.set,
                                    args.subscriptions)
            config_path = self.workdir / "gateway.yaml"
            config_path.write_text(yaml.safe_dump(config))
            for n in range(args.instances):
                port = free_port()
                log = self.workdir / f"gateway-{n}.log"
                if args.reference:
                    proc = self._spawn([PY, __file__, "_relay", "--port", str(port), "--receiver", receiver_url,
                                        "--secret", WHSEC], log)
                else:
                    proc = self._spawn([PY, "-m", "gateway.cli", "serve", "--config", str(config_path),
                                        "--host", "127.0.0.1", "--port", str(port)], log, gateway_root=args.gateway_root)
                wait_http(f"http://127.0.0.1:{port}/readyz", proc, 30, f"gateway {n}", log)
                gateways.append(proc)
                targets.append(f"http://127.0.0.1:{port}")

        out = self.workdir / "loadgen.json"
        prefix = f"b{self.label.replace('.', '_')}{int(time.time()) % 100000}"
        argv = [PY, __file__, "_loadgen", "--rate", str(self.rate), "--duration", str(args.duration),
                "--connections", str(args.connections), "--prefix", prefix, "--token", TWILIO_TOKEN,
                "--out", str(out), "--count", str(args.flood_max), "--per-call", str(args.per_call), "--gap", str(self.gap)]
        for t in targets:
            argv += ["--target", t]
        pids: dict[str, list[int]] = {"gateway": [p.pid for p in gateways], "receiver": [receiver.pid], "loadgen": []}
        activity = None
        if store.startswith(("postgresql://", "postgres://")) and not args.generator_ceiling:
            from pg_activity import PgActivity

            dsn, database = postgres_dsn(store)
            pids["database"] = []
            activity = PgActivity(dsn, database, pids["database"]).start()
        profiler = None
        with CpuSampler(pids) as sampler, contextlib.ExitStack() as stack:
            if activity is not None:
                stack.callback(activity.stop)
            loadgen = self._spawn(argv, self.workdir / "loadgen.log")
            pids["loadgen"].append(loadgen.pid)
            if args.profile and gateways:
                profiler = self._start_profiler(gateways[0].pid)
            try:
                loadgen.wait(timeout=args.duration * 2 + 120)
            except subprocess.TimeoutExpired:
                loadgen.kill()
                raise RuntimeError("load generator did not finish in time") from None
            if loadgen.returncode != 0:
                raise RuntimeError(f"load generator failed:\n{(self.workdir / 'loadgen.log').read_text()[-3000:]}")
            gen = json.loads(out.read_text())
            acked = sum(1 for s in gen["status"] if s == 204)
            # drain: wait until every acknowledged event arrived, or no progress for a while
            drain_start = time.time()
            last, last_change = -1, time.time()
            stats: dict[str, Any] = {}
            while time.time() - drain_start < args.drain_timeout:
                stats = httpx.get(receiver_url + "/_bench/stats", timeout=5).json()
                if args.generator_ceiling or stats["received"] >= acked * args.subscriptions:
                    break
                if stats["received"] != last:
                    last, last_change = stats["received"], time.time()
                elif time.time() - last_change > args.stall_timeout:
                    break
                time.sleep(0.1)
            if not args.generator_ceiling:
                time.sleep(args.settle)  # let stray duplicates arrive
            if profiler is not None:
                self._stop_profiler(profiler)
        for proc in gateways:  # first, so that nothing is delivered after the dump
            stop_process(proc)
        dump = httpx.get(receiver_url + "/_bench/dump", timeout=30).json()
        outbox, stored = None, None
        if args.generator_ceiling or args.reference:
            pass  # no outbox: every event not received counts as lost
        elif store.startswith("sqlite:///"):
            outbox, stored = sqlite_outbox(store[len("sqlite:///"):].partition("?")[0], prefix)
        elif store.startswith(("postgresql://", "postgres://")):
            outbox, stored = asyncio.run(postgres_outbox(store, prefix, drop_schema=self.pg_schema))
        result = analyse(gen, dump, sampler, self.rate, outbox, subscriptions=args.subscriptions,
                         generator_ceiling=args.generator_ceiling, per_call=args.per_call, gap=self.gap)
        if stored is not None:
            result.update(order_check(stored, dump["records"], {sub_path(n): sub_name(n) for n in range(args.subscriptions)}))
        if activity is not None and gen["sent"]:
            result["db_activity"] = activity.window(min(gen["sent"]), max(gen["sent"]))
        result["label"] = self.label
        if args.events:
            self._write_events(gen, dump, Path(args.events))
        return result

    def _write_events(self, gen: dict[str, Any], dump: dict[str, Any], folder: Path) -> None:
        """One CSV line per callback: when it was due, sent, answered, and first received."""
        folder.mkdir(parents=True, exist_ok=True)
        received: dict[int, float] = {}
        for run_id, kind, _wid, at, _path in dump.get("records", []):
            tail = run_id.rpartition("-")[2]
            if kind == "call.ringing" and tail.isdigit():
                received[int(tail)] = min(at, received.get(int(tail), at))
        with open(folder / f"{self.label}.csv", "w") as out:
            out.write("index,scheduled,sent,answered,status,received\n")
            for k, i in enumerate(gen["index"]):
                out.write(f"{i},{gen['sched'][k]:.6f},{gen['sent'][k]:.6f},{gen['done'][k]:.6f},{gen['status'][k]},"
                          f"{received.get(i, float('nan')):.6f}\n")

    def _start_profiler(self, pid: int) -> subprocess.Popen:
        target = Path(self.args.profile)
        target.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        argv = [spy, "record", "--pid", str(pid), "--rate", str(self.args.profile_rate), "--format", "raw",
                "--threads", "--nonblocking", "-o", str(target / f"{self.label}.txt"),
                "--duration", str(int(self.args.duration + 5))] + (["--gil"] if self.args.profile_gil else [])
        return subprocess.Popen(argv, stdout=open(target / f"{self.label}.log", "ab"), stderr=subprocess.STDOUT)

    @staticmethod
    def _stop_profiler(proc: subprocess.Popen) -> None:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=20)


_OUTBOX = ("SELECT e.workflow_run_id, e.type, e.seq, d.id, d.subscription, COALESCE(d.status, 'no-delivery-row')"
           " FROM events e LEFT JOIN deliveries d ON d.event_seq = e.seq WHERE e.workflow_run_id IS NOT NULL")
"""Every stored event of a call with its delivery rows: (run, type, seq, delivery id, subscription, status)."""

Stored = list[tuple[int, str, int, str | None, str, str]]
"""(call index, event type, seq, delivery id, subscription, status) of this run's calls."""


def outbox_rows(rows: list[tuple[Any, ...]], prefix: str) -> tuple[dict[tuple[int, str], str], Stored]:
    """(the delivery status of every stored `call.ringing` event of this run, every stored row of its calls)."""
    ringing: dict[tuple[int, str], str] = {}
    stored: Stored = []
    for run_id, kind, seq, delivery_id, subscription, status in rows:
        head, _, tail = run_id.rpartition("-")
        if head == prefix and tail.isdigit():
            stored.append((int(tail), kind, seq, delivery_id, subscription or "", status))
            if kind == "call.ringing":
                ringing[(int(tail), subscription or "")] = status
    return ringing, stored


def sqlite_outbox(path: str, prefix: str) -> tuple[dict[tuple[int, str], str], Stored]:
    """After the run: `outbox_rows` of the SQLite file."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(_OUTBOX).fetchall()
    finally:
        conn.close()
    return outbox_rows(rows, prefix)


def order_check(stored: Stored, records: list[Any], paths: dict[str, str]) -> dict[str, Any]:
    """Per call and subscription, whether its deliveries arrived (first receipt of each
    webhook-id) in the order of their events (seq); and stored deliveries never received that
    are not pending either (lost after being stored)."""
    first: dict[str, float] = {}
    for _run, _kind, webhook_id, at, _path in records:
        first[webhook_id] = min(at, first.get(webhook_id, at))
    by_call: dict[tuple[int, str], list[tuple[int, str]]] = {}
    lost = 0
    for call, _kind, seq, delivery_id, subscription, status in stored:
        if delivery_id is None or subscription not in paths.values():
            continue
        if delivery_id in first:
            by_call.setdefault((call, subscription), []).append((seq, delivery_id))
        elif status != "pending":
            lost += 1
    out_of_order = 0
    for rows in by_call.values():
        times = [first[delivery_id] for _, delivery_id in sorted(rows)]
        out_of_order += any(b < a for a, b in zip(times, times[1:]))
    return {"stored_deliveries": sum(1 for row in stored if row[3] is not None), "stored_lost": lost,
            "calls_checked": len(by_call), "calls_out_of_order": out_of_order}


def sub_path(n: int) -> str:
    return "/hooks" if n == 0 else f"/hooks{n}"


def sub_name(n: int) -> str:
    return "bench" if n == 0 else f"bench{n}"


def postgres_dsn(url: str) -> tuple[str, str]:
    """(asyncpg DSN without the gateway's `schema=` option, database name) of a store URL."""
    from gateway.store.postgres import split_store_url

    dsn, _ = split_store_url(url)
    return dsn, urlsplit(dsn).path.lstrip("/") or "postgres"


async def postgres_outbox(url: str, prefix: str, *, drop_schema: str | None = None) -> tuple[dict[tuple[int, str], str], Stored]:
    """`sqlite_outbox` for a PostgreSQL store (then drops the run's own schema, if it made one)."""
    import asyncpg
    from gateway.store.postgres import split_store_url

    dsn, schema = split_store_url(url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema} if schema else {})
    try:
        rows = await conn.fetch(_OUTBOX)
        if drop_schema:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{drop_schema}" CASCADE')
    finally:
        await conn.close()
    return outbox_rows([tuple(row) for row in rows], prefix)


def analyse(gen: dict[str, Any], dump: dict[str, Any], sampler: CpuSampler, rate: float,
            outbox: dict[tuple[int, str], str] | None = None, *, subscriptions: int = 1,
            generator_ceiling: bool = False, per_call: int = 1, gap: int = 1) -> dict[str, Any]:
    """Every number of one run. A delivery is (call index, subscription) of a call's
    `call.ringing` (its first callback); with N subscriptions each acknowledged first callback is
    expected N times. Later callbacks of a call (`--per-call`) count in the callback numbers
    and in `order_check`."""
    sched, sent, done, status, index = gen["sched"], gen["sent"], gen["done"], gen["status"], gen["index"]
    prefix = gen["prefix"]
    first_send = min(sent) if sent else gen["start"]
    last_send = max(sent) if sent else gen["start"]
    last_done = max(done) if done else last_send
    steps = [call_step(i, per_call, gap) for i in index]
    acked_all = {index[k] for k, s in enumerate(status) if s == 204}
    acked_idx = {steps[k][0] for k, s in enumerate(status) if s == 204 and steps[k][1] == 0}
    by_idx = {steps[k][0]: k for k in range(len(index)) if steps[k][1] == 0}
    cb_lat = [(done[k] - sent[k]) * 1000 for k, s in enumerate(status) if s == 204]
    lag = [(sent[k] - sched[k]) * 1000 for k in range(len(sent))]
    out: dict[str, Any] = {
        "target": rate, "issued": len(sent), "acked": len(acked_all),
        "errors": sum(1 for s in status if s != 204),
        "error_statuses": sorted({s for s in status if s != 204}),
        "send_window_s": last_send - first_send,
        "callbacks_per_s": len(acked_all) / max(1e-9, last_done - first_send),
        "callback_p50_ms": pct(cb_lat, 50), "callback_p99_ms": pct(cb_lat, 99),
        "gen_lag_p99_ms": pct(lag, 99), "gen_lag_max_ms": max(lag) if lag else float("nan"),
    }
    if generator_ceiling:
        out["cpu"] = sampler.window(first_send, last_done)
        return out
    paths = {sub_path(n): sub_name(n) for n in range(subscriptions)}
    records = dump["records"]
    seen_ids: dict[str, int] = {}
    first_receipt: dict[tuple[int, str], float] = {}
    event_keys: dict[tuple[int, str, str], set[str]] = {}
    foreign = 0
    for run_id, kind, webhook_id, at, path in records:
        seen_ids[webhook_id] = seen_ids.get(webhook_id, 0) + 1
        head, _, tail = run_id.rpartition("-")
        if head != prefix or not tail.isdigit() or path not in paths:
            foreign += 1
            continue
        i = int(tail)
        event_keys.setdefault((i, kind, path), set()).add(webhook_id)
        key = (i, paths[path])
        if kind == "call.ringing" and (key not in first_receipt or at < first_receipt[key]):
            first_receipt[key] = at
    expected = {(i, name) for i in acked_idx for name in paths.values()}
    duplicates = sum(n - 1 for n in seen_ids.values() if n > 1)
    unreceived = sorted(expected - set(first_receipt))
    # Not received is not lost while the event still waits in the outbox (the drain timed out).
    # Lost: acknowledged, never received, and not pending (no event, no row, failed or dead).
    # Without a way to read the outbox (other stores) every unreceived event counts as lost.
    pending = [k for k in unreceived if outbox is not None and outbox.get(k) == "pending"]
    lost = [k for k in unreceived if outbox is None or outbox.get(k) != "pending"]
    overtaken = 0  # --per-call: a later callback of the call was applied first, so no call.ringing (not a loss)
    if per_call > 1 and outbox is not None:
        overtaken = sum(1 for k in lost if k not in outbox)
        lost = [k for k in lost if k in outbox]
    e2e = [(at - sent[by_idx[i]]) * 1000 for (i, _), at in first_receipt.items() if i in by_idx]
    e2e_sched = [(at - sched[by_idx[i]]) * 1000 for (i, _), at in first_receipt.items() if i in by_idx]
    receipts = sorted(first_receipt.values())
    last_receipt = receipts[-1] if receipts else last_done
    in_window = sum(1 for t in receipts if t <= last_send)
    out.update({
        "subscriptions": subscriptions,
        "received": len(records), "events": len(first_receipt), "lost": len(lost), "lost_sample": lost[:5],
        "lost_states": sorted({outbox.get(k, "no-event") for k in lost}) if outbox is not None else None,
        "still_pending": len(pending), "ringing_overtaken": overtaken, "unacked_but_stored": (
            len({i for (i, _) in outbox if i not in acked_idx}) if outbox is not None else None),
        "duplicated": duplicates, "duplicate_events": sum(1 for ids in event_keys.values() if len(ids) > 1),
        "other_types": sum(1 for (i, kind, _) in event_keys if kind != "call.ringing"), "foreign": foreign,
        "bad_signatures": dump.get("bad", 0), "receiver_errors": dump.get("errors", 0),
        "events_per_s": len(first_receipt) / max(1e-9, last_receipt - first_send) if receipts else float("nan"),
        "events_per_s_in_window": in_window / max(1e-9, last_send - first_send) if receipts else float("nan"),
        "tail_s": last_receipt - last_send if receipts else float("nan"),
        "e2e_p50_ms": pct(e2e, 50), "e2e_p99_ms": pct(e2e, 99), "e2e_max_ms": max(e2e) if e2e else float("nan"),
        "e2e_sched_p99_ms": pct(e2e_sched, 99),
        "cpu": sampler.window(first_send, last_receipt),
        "cpu_window": sampler.window(first_send, last_send),
    })
    cpu = out["cpu"]
    handled = (len(records) - foreign if per_call > 1 else len(first_receipt)) or len(acked_idx)  # ingest only: per callback
    if cpu.get("gateway") and handled:  # CPU the gateway spent per event, ingest to delivery
        out["gateway_cpu_ms_per_event"] = cpu["gateway"] / 100 * cpu["seconds"] * 1000 / handled
    if len(receipts) > 10:  # delivery rate once ingest stopped: the delivery side's own ceiling
        after = [t for t in receipts if t > last_done]
        if len(after) > 50:
            out["drain_events_per_s"] = len(after) / max(1e-9, after[-1] - last_done)
            out["backlog_at_end"] = len(after)
    return out


def fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(results: list[dict[str, Any]]) -> str:
    head = ("| target ev/s | acked cb/s | e2e ev/s (in window) | e2e p50 ms | e2e p99 ms | e2e max ms | p99 from sched ms "
            "| callback p99 ms | lost | dup | pending at timeout | tail s | gateway CPU % | gateway CPU ms/event "
            "| recv CPU % | gen CPU % | database CPU % | other processes CPU % |")
    lines = [head, "|" + "---|" * 18]
    for r in results:
        cpu = r.get("cpu", {})
        lines.append("| " + " | ".join([
            fmt(r["target"]) if r["target"] else "flood",
            fmt(r["callbacks_per_s"]),
            f"{fmt(r.get('events_per_s'))} ({fmt(r.get('events_per_s_in_window'))})",
            fmt(r.get("e2e_p50_ms"), 1), fmt(r.get("e2e_p99_ms"), 1), fmt(r.get("e2e_max_ms"), 0),
            fmt(r.get("e2e_sched_p99_ms"), 1), fmt(r["callback_p99_ms"], 1),
            fmt(r.get("lost")), fmt(r.get("duplicated")), fmt(r.get("still_pending")), fmt(r.get("tail_s"), 2),
            fmt(cpu.get("gateway")), fmt(r.get("gateway_cpu_ms_per_event"), 2), fmt(cpu.get("receiver")),
            fmt(cpu.get("loadgen")), fmt(cpu.get("database")), fmt(cpu.get("others")),
        ]) + " |")
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> int:
    if args.instances < 1:
        raise SystemExit("--instances must be at least 1")
    if args.store != "sqlite" and not args.store.startswith(("sqlite?", "sqlite:///", "postgresql://", "postgres://")):
        raise SystemExit("--store is 'sqlite' (a fresh file per run, options as in 'sqlite?synchronous=normal'),"
                         " sqlite:///path or postgresql://...")
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    print(f"# bench/webhooks.py  python {platform.python_version()}  cpus={os.cpu_count()}  store={args.store}  "
          f"target={'reference (bare relay)' if args.reference else 'gateway'}  "
          f"instances={args.instances}  connections={args.connections}  duration={args.duration}s  set={args.set}")
    print(f"# workdir {workdir}", flush=True)
    results: list[dict[str, Any]] = []
    plan: list[tuple[str, float]] = []
    if args.generator_ceiling:
        plan.append(("generator-ceiling", 0.0))
    else:
        plan += [(f"r{int(r)}", r) for r in rates]
        if args.ceiling:
            plan.append(("ceiling", 0.0))
    try:
        for label, rate in plan:
            for rep in range(args.repeat):
                name = label if args.repeat == 1 else f"{label}.{rep}"
                busy = wait_quiet(args.wait_quiet, args.wait_quiet_max) if args.wait_quiet is not None else None
                print(f"-- {name}: {'closed loop' if rate == 0 else f'{rate:g} ev/s'} for {args.duration} s"
                      + (f" (machine {busy:.0f} % busy before it)" if busy is not None else ""), flush=True)
                result = Run(args, workdir, name, rate).execute()
                results.append(result)
                cpu = result.get("cpu", {})
                if args.generator_ceiling:
                    print(f"   generator: {result['callbacks_per_s']:,.0f} req/s over {args.connections} connections; "
                          f"gen CPU {fmt(cpu.get('loadgen'))} %, sink CPU {fmt(cpu.get('receiver'))} %", flush=True)
                    continue
                print(f"   acked {result['acked']:,}/{result['issued']:,} ({result['callbacks_per_s']:,.0f}/s)  "
                      f"received {result['events']:,} ({fmt(result['events_per_s'])}/s)  lost {result['lost']}  "
                      f"pending {result['still_pending']}  "
                      f"dup {result['duplicated']}  e2e p50/p99/max {fmt(result['e2e_p50_ms'], 1)}/"
                      f"{fmt(result['e2e_p99_ms'], 1)}/{fmt(result['e2e_max_ms'])} ms  gateway CPU "
                      f"{fmt(cpu.get('gateway'))} % ({fmt(result.get('gateway_cpu_ms_per_event'), 2)} ms/event)  "
                      f"other processes {fmt(cpu.get('others'))} %"
                      + (f"  drain {result['drain_events_per_s']:,.0f}/s" if "drain_events_per_s" in result else ""),
                      flush=True)
                if "database" in cpu:
                    print(f"   database CPU {fmt(cpu.get('database'))} % (the PostgreSQL server's processes for this"
                          f" database and its background ones)", flush=True)
                if "db_activity" in result:
                    from pg_activity import summary

                    print("   " + summary(result["db_activity"]), flush=True)
                if "calls_checked" in result:
                    print(f"   order: {result['calls_out_of_order']} of {result['calls_checked']} calls out of order;"
                          f" {result['stored_lost']} of {result['stored_deliveries']} stored deliveries lost"
                          + (f"; {result['ringing_overtaken']} calls' ringing overtaken by their next callback (no"
                             " call.ringing event)" if args.per_call > 1 else ""), flush=True)
                if result["bad_signatures"] or result["receiver_errors"]:
                    print(f"   !! {result['bad_signatures']} bad signatures, {result['receiver_errors']} unreadable")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if results and not args.generator_ceiling:
        print()
        print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    rec = sub.add_parser("_receiver")
    rec.add_argument("--port", type=int, required=True)
    rec.add_argument("--secret", required=True)
    rec.add_argument("--sink", action="store_true")
    relay = sub.add_parser("_relay")
    relay.add_argument("--port", type=int, required=True)
    relay.add_argument("--receiver", required=True)
    relay.add_argument("--secret", required=True)
    relay.add_argument("--concurrency", type=int, default=64)
    gen = sub.add_parser("_loadgen")
    gen.add_argument("--target", action="append", required=True)
    gen.add_argument("--rate", type=float, required=True)
    gen.add_argument("--duration", type=float, required=True)
    gen.add_argument("--count", type=int, default=60000)
    gen.add_argument("--connections", type=int, default=32)
    gen.add_argument("--prefix", required=True)
    gen.add_argument("--token", required=True)
    gen.add_argument("--out", required=True)
    gen.add_argument("--per-call", type=int, default=1)
    gen.add_argument("--gap", type=int, default=1)

    parser.add_argument("--rates", default="250,500,1000,1500,2000", help="target events/s, comma separated ('' for none)")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of load per rate")
    parser.add_argument("--repeat", type=int, default=1, help="runs per rate")
    parser.add_argument("--store", default="sqlite",
                        help="'sqlite' (fresh file per run; 'sqlite?synchronous=normal' with options), sqlite:///path or postgresql://...")
    parser.add_argument("--instances", type=int, default=1, help="gateway processes sharing the store")
    parser.add_argument("--connections", type=int, default=128, help="keep-alive connections of the generator (a callback waits for its group commit: at 1,500/s and ~40 ms each, 60 are busy)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="override a gateway config key, e.g. delivery.concurrency=32 (repeatable)")
    parser.add_argument("--per-call", type=int, default=1, choices=(1, 2, 3),
                        help="status callbacks per call (ringing, in-progress, completed), each on the next gateway"
                             " (with --instances), --gap-ms apart; checks every call's events arrive in order")
    parser.add_argument("--gap-ms", type=float, default=200.0, help="time between one call's callbacks (--per-call)")
    parser.add_argument("--subscriptions", type=int, default=1,
                        help="webhook subscriptions for call.* (0: ingest only; N: every event delivered N times)")
    parser.add_argument("--ceiling", action="store_true", help="also flood closed-loop: the gateway's own ceiling")
    parser.add_argument("--flood-max", type=int, default=60000, help="callbacks pre-built for a closed-loop flood")
    parser.add_argument("--reference", action="store_true",
                        help="run the bare relay (no verification, no store) in place of the gateway: the reference")
    parser.add_argument("--generator-ceiling", action="store_true", help="measure the generator against a bare sink")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="max seconds to wait for deliveries after the load")
    parser.add_argument("--stall-timeout", type=float, default=10.0, help="stop draining after this long without progress")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds to wait for stray duplicates")
    parser.add_argument("--wait-quiet", type=float, metavar="PCT",
                        help="before each run, wait until the machine is below PCT %% busy (of 100 x cores)")
    parser.add_argument("--wait-quiet-max", type=float, default=120.0, help="...but at most this many seconds")
    parser.add_argument("--profile", metavar="DIR", help="py-spy record the (first) gateway into DIR during each run")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--profile-gil", action="store_true",
                        help="sample only the thread holding the GIL (Python CPU, without I/O waits)")
    parser.add_argument("--gateway-root", metavar="DIR", help="run the gateway package found in DIR (A/B runs)")
    parser.add_argument("--json", metavar="PATH", help="write every result as JSON")
    parser.add_argument("--events", metavar="DIR", help="write each run's callbacks, one CSV line each (times), into DIR")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = parser.parse_args(argv)
    if args.role == "_receiver":
        receiver_main(args)
        return 0
    if args.role == "_relay":
        relay_main(args)
        return 0
    if args.role == "_loadgen":
        loadgen_main(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
