"""Media bridge under load: N simulated Twilio calls in real time through a `gateway serve` process.

Run by hand:
    .venv/bin/python bench/media.py                           # 50..250 calls, each target on its own
    .venv/bin/python bench/media.py --calls 30 --targets reference,bridge-before,bridge --together \
        --repeat 3 --before /tmp/old-tree                     # side by side: ratios that survive noise
    .venv/bin/python bench/media.py --calls 60,80,100 --targets bridge   # capacity of one worker
    .venv/bin/python bench/media.py --profile 70              # py-spy profile of the bridge at 70 calls
    .venv/bin/python bench/media.py --profile 150 --targets bridge-echo   # ... of the built-in echo at 150
    .venv/bin/python bench/media.py --calls 30 --targets reference,bridge --together --agent-audio mulaw/8000
                                                              # the bridge without transcoding: its cost by difference
    .venv/bin/python bench/media.py --calls 100,200 --targets bridge-echo --workers 2
                                                              # gateway serve --workers 2: CPU summed over its processes

On a shared machine, wait for quiet (`--quiet`, on by default) and prefer `--together`: targets
that run side by side see the same interference, so their ratio holds when absolute numbers
wander. The "other processes" column says how much CPU something else took during the window.

Each call is what Twilio does: a signed initial webhook (TwiML with the stream URL and token),
then a WebSocket sending `connected`, `start` and 50 `media` messages per second in real time
(calls spread evenly over the 20 ms frame period). Every frame is a tone whose pitch encodes the
frame number mod 31, so the echo that comes back can be matched to the frame sent, through the
gateway's transcoding (μ-law 8 kHz -> PCM16 16 kHz -> agent -> back) and re-framing.

Targets (one at a time, or side by side with --together):
  bridge            `gateway serve` -> external echo agent (bench/echo_agent.py, its own process)
  bridge-echo       `gateway serve` with the built-in `echo` agent
  reference         bare Starlette JSON echo of Twilio media (bench/reference_echo.py)
  reference-asgi    the same echo on raw ASGI, without Starlette's WebSocket wrapper
  reference-asyncio the reference on the standard asyncio loop instead of uvloop
  bridge-before, bridge-echo-before   the bridge from the source tree named by --before
  bridge-recording  the bridge with `recording: true` (a stereo WAV per call)

Reported per target and call count: CPU of the server process over a steady window (% of one
core, and per call), round-trip latency p50/p99/max of frames sent in the window (for the
bridge that is everything the gateway adds, the agent hop on loopback included), frames lost
(sent in the window, never echoed) and misframed (echoed with the wrong size or content).
The load generator runs in its own process; everything listens on 127.0.0.1 only, and every
process is stopped (by its pid) when its run ends or after a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TWILIO_SID = "AC" + "0" * 32
TWILIO_TOKEN = "bench-twilio-auth-token"
TONES = 31  # frame i carries tone i % TONES
FRAME_SECONDS = 0.02
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("bridge", "bridge-echo", "reference", "reference-asgi")  # and bridge-before, bridge-echo-before with --before
EXTERNAL_AGENT = ("bridge", "bridge-before", "bridge-recording")


# --- frames: tones that survive transcoding ---------------------------------------------------


def _mulaw_decode_table() -> np.ndarray:
    """G.711 μ-law byte -> int16, written out here so the check does not trust the gateway's codec."""
    table = np.empty(256, dtype=np.int16)
    for byte in range(256):
        u = ~byte & 0xFF
        t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
        table[byte] = (0x84 - t) if u & 0x80 else (t - 0x84)
    return table


MULAW_DECODE = _mulaw_decode_table()
TONE_HZ = 300 + 100 * np.arange(TONES)  # whole cycles in 20 ms: frames join without clicks
TONE_BINS = (TONE_HZ / 50).astype(int)  # rfft bins of a 160-sample frame at 8 kHz


def mulaw_encode(samples: np.ndarray) -> bytes:
    """int16 -> μ-law (the nearest code: exact enough for test tones)."""
    order = np.argsort(MULAW_DECODE)
    values = MULAW_DECODE[order].astype(np.int32)
    idx = np.clip(np.searchsorted(values, samples.astype(np.int32)), 1, 255)
    left, right = values[idx - 1], values[idx]
    pick = np.where(np.abs(samples - left) <= np.abs(right - samples), idx - 1, idx)
    return order[pick].astype(np.uint8).tobytes()


def tone_payloads() -> list[str]:
    t = np.arange(160) / 8000
    return [base64.b64encode(mulaw_encode((np.sin(2 * np.pi * f * t) * 8000).astype(np.int16))).decode() for f in TONE_HZ]


def decode_tones(payloads: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tone index per frame or -1 when unclear, byte length per frame)."""
    raw = [base64.b64decode(p) for p in payloads]
    lengths = np.array([len(r) for r in raw], dtype=np.int32)
    tones = np.full(len(raw), -1, dtype=np.int32)
    ok = np.flatnonzero(lengths == 160)
    if ok.size:
        data = np.frombuffer(b"".join(raw[i] for i in ok), dtype=np.uint8).reshape(-1, 160)
        spectrum = np.abs(np.fft.rfft(MULAW_DECODE[data].astype(np.float32), axis=1))[:, TONE_BINS]
        top2 = np.sort(spectrum, axis=1)[:, -2:]
        clear = (top2[:, 1] > 1.5 * top2[:, 0]) & (top2[:, 1] > 1000)
        tones[ok[clear]] = np.argmax(spectrum[clear], axis=1)
    return tones, lengths


# --- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) and of its live descendants so far (the
    workers and writer process of `gateway serve --workers N`)."""
    total = 0.0
    for one in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{one}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def descendants(pid: int) -> list[int]:
    """The live descendants of `pid`."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def loaded_libraries(pid: int) -> dict[str, bool]:
    """Which fast paths the server process (or, with --workers, its workers) really loaded."""
    maps = ""
    for one in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{one}/maps") as f:
            maps += f.read()
    return {"uvloop": "uvloop/loop" in maps, "httptools": "httptools/parser" in maps}


# --- the load generator (its own process) -----------------------------------------------------


@dataclass
class Call:
    index: int
    target: str = ""
    base: str = ""
    ws: Any = None
    sid: str = ""
    seq: int = 0
    frame: int = 0
    streaming: bool = False
    sent: array = field(default_factory=lambda: array("d"))
    received: array = field(default_factory=lambda: array("d"))
    messages: list[bytes] = field(default_factory=list)  # as received (JSON text); parsed after the run
    closed_early: str | None = None


def _socket_class() -> type:
    """A WebSocket client that records each message's arrival time and bytes, and nothing else.

    It is the gateway's own lean client (gateway/media/agent_socket.py) with delivery replaced,
    so the load generator spends as little CPU per message as the machine allows: on two cores
    every cycle it saves is one the server under test can use.
    """
    from gateway.media.agent_socket import AgentSocket

    class LoadSocket(AgentSocket):
        def __init__(self, url: str, call: Call) -> None:
            super().__init__(url, ping_interval=None, max_queue=1 << 30, close_timeout=2)
            self.call = call

        def _deliver(self, opcode: Any, data: bytes) -> None:
            self.call.received.append(time.perf_counter())
            self.call.messages.append(data)

    return LoadSocket


async def _open_call(call: Call, run_prefix: str, http: Any) -> None:
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(TWILIO_TOKEN)
    call.sid = f"MZ{call.index:032d}"
    params: dict[str, str] = {}
    target, base = call.target, call.base
    if target.startswith("bridge"):
        url = f"{base}/api/v1/telephony/webhook/wf-bench/user-bench/{run_prefix}-{call.index}"
        form = {"CallSid": f"CA{call.index:032d}", "AccountSid": TWILIO_SID, "CallStatus": "in-progress",
                "From": "+15550001", "To": "+15550002", "Direction": "inbound"}
        response = await http.post(url, data=form, headers={"X-Twilio-Signature": validator.compute_signature(url, form)})
        response.raise_for_status()
        ws_url = re.search(r'<Stream url="([^"]+)"', response.text).group(1)
        params = dict(re.findall(r'<Parameter name="([^"]+)" value="([^"]+)"', response.text))
        headers = {"X-Twilio-Signature": validator.compute_signature(ws_url, {})}
    else:
        ws_url = base.replace("http://", "ws://") + "/ws"
        headers = {}
    ws = _socket_class()(ws_url, call)
    await ws.open(headers, timeout=10, user_agent="media-bench")
    call.ws = ws
    ws.send_text(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    call.seq = 1
    ws.send_text(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": call.sid, "start": {
        "streamSid": call.sid, "accountSid": TWILIO_SID, "callSid": f"CA{call.index:032d}", "tracks": ["inbound"],
        "customParameters": params, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))


async def run_load(args: argparse.Namespace) -> list[dict[str, Any]]:
    import httpx

    payloads = tone_payloads()
    targets = [item.split("=", 1) for item in args.targets.split(",")]  # name=base, calls dealt round-robin
    calls = [Call(i, *targets[i % len(targets)]) for i in range(args.calls * len(targets))]
    groups: list[list[Call]] = [[] for _ in range(20)]  # one per ms of the 20 ms frame period
    for call in calls:
        groups[call.index % 20].append(call)
    clock = time.perf_counter
    lateness: list[float] = []
    stop_sending = asyncio.Event()

    async def ticker() -> None:
        start = clock()
        tick = 0
        while not stop_sending.is_set():
            due = start + tick * 0.001
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            late = clock() - due
            if tick % 10 == 0:
                lateness.append(late)
            for call in groups[tick % 20]:
                if not call.streaming:
                    continue
                call.seq += 1
                i = call.frame
                call.frame = i + 1
                text = ('{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d","timestamp":"%d",'
                        '"payload":"%s"},"streamSid":"%s"}') % (call.seq, i + 1, i * 20, payloads[i % TONES], call.sid)
                call.sent.append(clock())
                try:
                    call.ws.send_text(text)
                except Exception as exc:  # noqa: BLE001 - a dead call stops sending, counted as lost frames
                    call.streaming = False
                    call.closed_early = call.closed_early or f"send failed: {exc}"
            tick += 1

    sender = asyncio.ensure_future(ticker())
    setup_started = clock()
    async with httpx.AsyncClient(timeout=10) as http:
        semaphore = asyncio.Semaphore(20)

        async def open_one(call: Call) -> None:
            async with semaphore:
                await _open_call(call, args.run_prefix, http)
            call.streaming = True

        pending = []
        for call in calls:  # ramp: at most `ramp` new calls per second
            pending.append(asyncio.ensure_future(open_one(call)))
            await asyncio.sleep(1 / args.ramp)
        pending_results = await asyncio.gather(*pending, return_exceptions=True)
    setup_seconds = clock() - setup_started

    await asyncio.sleep(args.warmup)
    pids = {name: int(pid) for name, pid in (item.rsplit("=", 1) for item in args.pids.split(",") if item)}
    pids["loadgen"] = os.getpid()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    system_before = system_cpu()
    window_start = clock()
    lateness.clear()
    await asyncio.sleep(args.window)
    window_end = clock()
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    system_after = system_cpu()
    window = window_end - window_start
    rss = {name: rss_mb(pid) for name, pid in pids.items()}
    send_lateness = sorted(lateness)

    await asyncio.sleep(0.5)  # frames sent at the window's end still come back
    stop_sending.set()
    await sender
    await asyncio.sleep(1.0)
    for call in calls:
        if call.ws is not None:
            with contextlib.suppress(Exception):
                call.ws.send_text(json.dumps({"event": "stop", "streamSid": call.sid, "stop": {}}))
    await asyncio.sleep(0.2)
    await asyncio.gather(*(call.ws.close() for call in calls if call.ws is not None), return_exceptions=True)

    busy = (system_after[0] - system_before[0]) / max(1, system_after[1] - system_before[1])
    machine = round(busy * 100 * (os.cpu_count() or 1), 1)
    cpu = {name: round((cpu_after[name] - cpu_before[name]) / window * 100, 1) for name in pids}
    late = round(send_lateness[int(len(send_lateness) * 0.99)] * 1000, 2) if send_lateness else None
    results = []
    for name, _ in targets:
        mine = [c for c in calls if c.target == name]
        stats = frame_stats(mine, window_start, window_end)
        results.append({
            "target": name,
            "calls": len(mine),
            "together": [other for other, _ in targets if other != name],
            "connected": sum(1 for c in mine if c.ws is not None),
            "failures": [repr(r) for r, c in zip(pending_results, calls) if isinstance(r, BaseException) and c.target == name][:5],
            "closed_early": sum(1 for c in mine if c.closed_early and c.streaming is False),
            "setup_seconds": round(setup_seconds, 2),
            "window_seconds": round(window, 2),
            "cpu_percent": {"server": cpu[f"server:{name}"], **{k: v for k, v in cpu.items() if not k.startswith("server:")
                                                                and (k != "agent" or name in EXTERNAL_AGENT)}},
            "machine_busy_percent": machine,
            "rss_mb": {k: round(v, 1) for k, v in rss.items()},
            **stats,
            "send_lateness_ms_p99": late,
        })
    return results


def frame_stats(calls: list[Call], window_start: float, window_end: float) -> dict[str, Any]:
    """Latency, loss and misframing of the frames these calls sent inside the window."""
    latencies: list[np.ndarray] = []
    sent_in_window = lost = misframed = echoed = 0
    for call in calls:
        sent = np.frombuffer(call.sent, dtype=np.float64)
        media = [(at, m["media"]["payload"]) for at, m in zip(call.received, map(json.loads, call.messages))
                 if m.get("event") == "media"]
        received = np.array([at for at, _ in media], dtype=np.float64)
        tones, _ = decode_tones([payload for _, payload in media])
        matched = np.full(sent.size, -1.0)
        next_frame = 0
        for r in range(received.size):
            tone = tones[r]
            if tone < 0:
                if window_start <= received[r] <= window_end + 1.5:
                    misframed += 1
                next_frame += 1
                continue
            frame = next_frame + (tone - next_frame) % TONES
            if frame < sent.size:
                matched[frame] = received[r]
            next_frame = frame + 1
        in_window = (sent >= window_start) & (sent < window_end)
        sent_in_window += int(in_window.sum())
        got = in_window & (matched > 0)
        echoed += int(got.sum())
        lost += int((in_window & (matched < 0)).sum())
        latencies.append((matched[got] - sent[got]) * 1000)
    values = np.concatenate(latencies) if latencies else np.zeros(0)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values.size else None

    return {
        "frames_sent": sent_in_window, "frames_echoed": echoed, "frames_lost": lost, "frames_misframed": misframed,
        "latency_ms": {"p50": pct(50), "p99": pct(99), "max": round(float(values.max()), 2) if values.size else None},
    }


def load_main(args: argparse.Namespace) -> None:
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(asyncio.wait_for(run_load(args), args.deadline))
    else:
        result = uvloop.run(asyncio.wait_for(run_load(args), args.deadline))
    print("RESULT " + json.dumps(result), flush=True)  # a list: one result per target


# --- the orchestrator -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child process with its output in a log file; stopped by its own pid."""

    def __init__(self, name: str, argv: list[str], workdir: Path, *, cwd: Path = ROOT, env: dict[str, str] | None = None,
                 cpus: set[int] | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)  # threads it starts later inherit it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_port(self, port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {port}:\n{self.log()[-3000:]}")

    def wait_workers(self, count: int, timeout: float = 60) -> None:
        """Until `count` workers of `gateway serve --workers` have started their app (before that,
        every connection goes to the first one up)."""
        deadline = time.monotonic() + timeout
        while self.log().count("Application startup complete") < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {count} workers did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gateway_config(workdir: Path, agent_url: str, *, recording: bool = False,
                   agent_audio: tuple[str, int] = ("pcm16", 16000), workers: int = 1) -> Path:
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "store": f"sqlite:///{workdir}/gateway.db",
        "data_dir": str(workdir),
        "api_key": "bench-api-key",
        "secret_key": "bench-secret-key",
        "providers": {"twilio": {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "api_base_url": "http://127.0.0.1:9"}},
        "agent": {"url": agent_url, "audio": {"encoding": agent_audio[0], "sample_rate": agent_audio[1]}},
        "recording": recording,
        "workers": workers,
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Options:
    window: float
    warmup: float
    ramp: float
    gateway_src: Path
    before: Path | None = None
    quiet_percent: float = 15.0
    server_cpus: set[int] | None = None  # --pin: the server alone on CPU 0, agent and load generator on the rest
    load_cpus: set[int] | None = None
    server_env: dict[str, str] | None = None  # extra environment of the gateway processes (experiments)
    agent_audio: tuple[str, int] = ("pcm16", 16000)  # mulaw/8000: no transcoding (what it costs, by difference)
    native_profile: bool = False
    quiet_wait: float = 300.0
    workers: int = 1  # gateway serve's worker processes (their CPU is summed into the server's)


def wait_for_quiet(limit_percent: float, max_wait: float) -> float:
    """Wait (up to `max_wait` s) until other processes use under `limit_percent` of a core; returns their use."""
    deadline = time.monotonic() + max_wait
    while True:
        before = system_cpu()
        time.sleep(1.0)
        after = system_cpu()
        busy = (after[0] - before[0]) / max(1, after[1] - before[1]) * 100 * (os.cpu_count() or 1)
        if busy < limit_percent or time.monotonic() > deadline:
            return busy
        print(f"  (machine busy {busy:.0f}% of a core with other work; waiting)", flush=True)
        time.sleep(4)


def run_targets(targets: list[str], calls: int, options: Options, workdir: Path, *,
                profile: Path | None = None) -> list[dict[str, Any]]:
    """Start every target's server (side by side), drive `calls` calls to each at once from one
    load generator, stop everything. Side by side, the targets share whatever else the machine
    is doing, so their ratios hold even when the absolute numbers wander."""
    started: list[Process] = []
    idle_busy = wait_for_quiet(options.quiet_percent, options.quiet_wait)
    try:
        pids: dict[str, int] = {}
        ports: dict[str, int] = {}
        agent_url = None
        if any(t in EXTERNAL_AGENT for t in targets):
            agent_port = free_port()
            agent = Process("echo-agent", [PYTHON, str(ROOT / "bench" / "echo_agent.py"), "--port", str(agent_port),
                                           "--seconds", "900"], workdir, cpus=options.load_cpus)
            started.append(agent)
            agent.wait_port(agent_port)
            agent_url = f"ws://127.0.0.1:{agent_port}/agent"
            pids["agent"] = agent.pid
        for target in targets:
            port = ports[target] = free_port()
            if target.startswith("bridge"):
                external = target in EXTERNAL_AGENT
                config = gateway_config(workdir / target, agent_url if external else "echo", agent_audio=options.agent_audio,
                                        recording=target == "bridge-recording", workers=options.workers)
                server = Process(f"gateway-{target}", [PYTHON, "-m", "gateway.cli", "serve", "--config", str(config),
                                                       "--host", "127.0.0.1", "--port", str(port)], workdir,
                                 cpus=options.server_cpus, env=options.server_env,
                                 cwd=options.before if target.endswith("-before") else options.gateway_src)
            else:
                variant = "asgi" if target == "reference-asgi" else "starlette"
                loop = "asyncio" if target.endswith("-asyncio") else "auto"
                server = Process(f"{target}", [PYTHON, str(ROOT / "bench" / "reference_echo.py"), "--port", str(port),
                                               "--variant", variant, "--loop", loop], workdir, cpus=options.server_cpus)
            started.append(server)
            pids[f"server:{target}"] = server.pid
        for target in targets:
            next(p for p in started if p.pid == pids[f"server:{target}"]).wait_port(ports[target])
            if target.startswith("bridge") and options.workers > 1:
                next(p for p in started if p.pid == pids[f"server:{target}"]).wait_workers(options.workers)
        libraries = {t: loaded_libraries(pids[f"server:{t}"]) for t in targets}
        deadline = calls * len(targets) / options.ramp + options.warmup + options.window + 60
        load = Process("loadgen", [PYTHON, str(Path(__file__).resolve()), "_load",
                                   "--targets", ",".join(f"{t}=http://127.0.0.1:{ports[t]}" for t in targets),
                                   "--calls", str(calls), "--window", str(options.window), "--warmup", str(options.warmup),
                                   "--ramp", str(options.ramp), "--deadline", str(deadline),
                                   "--run-prefix", f"bench{int(time.time())}",
                                   "--pids", ",".join(f"{k}={v}" for k, v in pids.items())], workdir, cpus=options.load_cpus)
        started.append(load)
        spy = None
        if profile is not None:
            time.sleep(calls * len(targets) / options.ramp + options.warmup + 1)
            spy = subprocess.run(
                [str(Path(PYTHON).with_name("py-spy")), "record", "--pid", str(pids[f"server:{targets[0]}"]),
                 "--duration", str(int(options.window - 2)), "--rate", "200", "--format", "raw",
                 *(["--native"] if options.native_profile else ["--nonblocking"]),
                 "--output", str(profile)],
                capture_output=True, text=True, timeout=options.window + 30,
            )
        try:
            load.proc.wait(timeout=deadline + 10)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"load generator overran its deadline:\n{load.log()[-3000:]}") from None
        line = next((l for l in reversed(load.log().splitlines()) if l.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"load generator failed:\n{load.log()[-3000:]}")
        results = json.loads(line[len("RESULT "):])
        for result in results:
            target = result["target"]
            result["libraries"] = libraries[target]
            result["busy_before_percent"] = round(idle_busy, 1)
            mine = sum(result["cpu_percent"].values()) + sum(r["cpu_percent"]["server"] for r in results if r is not result)
            if "agent" not in result["cpu_percent"] and "agent" in pids:
                mine += next(r["cpu_percent"]["agent"] for r in results if "agent" in r["cpu_percent"])
            result["others_percent"] = round(result["machine_busy_percent"] - mine, 1)
            if target.startswith("bridge"):
                result["gateway_counters"] = gateway_counters(ports[target])
                server_log = next(p for p in started if p.pid == pids[f"server:{target}"]).log()
                gc_lines = [line for line in server_log.splitlines() if line.startswith("GCSTATS")]
                if gc_lines:  # written by an experiment's sitecustomize (see --server-env)
                    result["gc"] = gc_lines[-1]
            if spy is not None and spy.returncode != 0:
                result["profile_error"] = (spy.stderr or spy.stdout)[-500:]
        return results
    finally:
        for proc in reversed(started):
            proc.stop()


def gateway_counters(port: int) -> dict[str, int]:
    """The media counters the gateway stored for the run's calls (summed over calls)."""
    import httpx

    totals: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        calls = httpx.get(f"http://127.0.0.1:{port}/api/v1/calls?limit=500", headers={"Authorization": "Bearer bench-api-key"},
                          timeout=10).json()["calls"]
        if all(call["media"].get("ended") for call in calls):
            break
        time.sleep(0.2)
    for call in calls:
        for key in ("frames_in", "frames_out", "inbound_dropped", "outbound_dropped", "misframed", "bad_messages"):
            totals[key] += int(call["media"].get(key) or 0)
        totals["ended"] += bool(call["media"].get("ended"))
    return dict(totals)


def summarize_profile(path: Path, top: int = 25) -> str:
    """Top functions by own time and by time including callees, from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        frames = [f.replace(str(ROOT) + "/", "").replace(sys.prefix + "/lib/python3.11/site-packages/", "") for f in frames]
        frames = [re.sub(r"/\S*/lib/python3\.\d+/", "", f) for f in frames]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"py-spy: {total} samples of the gateway's busy time (idle waits excluded)", "", "| own % | function (file) |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| incl. % | function (file) |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def progress_line(result: dict[str, Any]) -> str:
    lat, calls = result["latency_ms"], result["calls"]
    return (f"{result['target']:18} {calls:4} calls: server {result['cpu_percent']['server']:6.1f}% "
            f"({result['cpu_percent']['server'] / calls:.3f}%/call) p50 {lat['p50']} p99 {lat['p99']} ms "
            f"lost {result['frames_lost']} misframed {result['frames_misframed']} others {result['others_percent']}% "
            f"libs {result['libraries']} loadgen late p99 {result['send_lateness_ms_p99']} ms {result.get('gateway_counters', '')}"
            + (f" FAILURES {result['failures']}" if result["failures"] else ""))


def medians(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, calls): the median of each number over the repeated runs."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["target"], r["calls"]), []).append(r)

    def med(values: list[Any]) -> Any:
        values = sorted(v for v in values if v is not None)
        return values[len(values) // 2] if values else None

    out = []
    for (target, calls), rows in groups.items():
        row = dict(rows[0])
        row["cpu_percent"] = {k: med([r["cpu_percent"].get(k) for r in rows]) for k in rows[0]["cpu_percent"]}
        row["latency_ms"] = {k: med([r["latency_ms"][k] for r in rows]) for k in rows[0]["latency_ms"]}
        for key in ("frames_sent", "frames_lost", "frames_misframed", "others_percent"):
            row[key] = med([r[key] for r in rows])
        out.append(row)
    return out


def table(results: list[dict[str, Any]]) -> str:
    reference = {r["calls"]: r for r in results if r["target"] == "reference"}
    rows = ["| target | calls | server CPU % of a core | CPU per call % | × reference | latency p50 / p99 / max ms | frames sent | lost | misframed | agent CPU % | loadgen CPU % | other processes % |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        cpu = r["cpu_percent"]["server"]
        per_call = cpu / r["calls"]
        ref = reference.get(r["calls"])
        ratio = f"{per_call / (ref['cpu_percent']['server'] / ref['calls']):.2f}" if ref else "-"
        lat = r["latency_ms"]
        rows.append(
            f"| {r['target']} | {r['calls']} | {cpu:.1f} | {per_call:.3f} | {ratio} | {lat['p50']} / {lat['p99']} / {lat['max']} | "
            f"{r['frames_sent']} | {r['frames_lost']} | {r['frames_misframed']} | {r['cpu_percent'].get('agent', '-')} | "
            f"{r['cpu_percent']['loadgen']} | {r['others_percent']} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="Media bridge benchmark (see the module docstring)")
    parser.add_argument("--calls", default="50,100,150,200,250", help="comma-separated call counts")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--window", type=float, default=15, help="steady-state seconds measured")
    parser.add_argument("--warmup", type=float, default=3, help="seconds after the last call connected")
    parser.add_argument("--ramp", type=float, default=50, help="new calls per second")
    parser.add_argument("--gateway-src", type=Path, default=ROOT, help="source tree the gateway runs from")
    parser.add_argument("--before", type=Path, help="another source tree, run as the targets bridge-before, bridge-echo-before")
    parser.add_argument("--profile", type=int, metavar="CALLS",
                        help="only profile one target (--targets' first; bridge by default) at CALLS calls with py-spy")
    parser.add_argument("--native", action="store_true", help="with --profile: include C frames (py-spy --native)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--together", action="store_true",
                        help="run the targets side by side, `calls` calls each, under one load generator")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the gateway processes (experiments)")
    parser.add_argument("--agent-audio", default="pcm16/16000", metavar="ENCODING/RATE",
                        help="the agent's audio format (mulaw/8000: the bridge without transcoding, to cost it)")
    parser.add_argument("--pin", action="store_true", help="server on CPU 0; agent and load generator on the other CPUs")
    parser.add_argument("--workers", type=int, default=1, help="the gateway's worker processes (gateway serve --workers)")
    parser.add_argument("--repeat", type=int, default=1, help="run every (calls, target) this many times, interleaved")
    parser.add_argument("--quiet", type=float, default=15.0, metavar="PERCENT",
                        help="before each run, wait until other processes use less than this much of a core")
    args = parser.parse_args()
    options = Options(window=args.window, warmup=args.warmup, ramp=args.ramp, gateway_src=args.gateway_src.resolve(),
                      quiet_percent=args.quiet, before=args.before.resolve() if args.before else None)
    options.server_env = dict(item.split("=", 1) for item in args.server_env) or None
    options.native_profile = args.native
    options.workers = args.workers
    encoding, _, rate = args.agent_audio.partition("/")
    options.agent_audio = (encoding, int(rate))
    if args.pin and (os.cpu_count() or 1) > 1:
        options.server_cpus, options.load_cpus = {0}, set(range(1, os.cpu_count() or 2))
    import uvicorn
    import websockets

    print(f"# media bench: {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"uvicorn {uvicorn.__version__}, websockets {websockets.__version__}, gateway from {options.gateway_src}")
    with tempfile.TemporaryDirectory(prefix="media-bench-") as tmp:
        workdir = Path(tmp)
        if args.profile:
            out = workdir / "profile.txt"
            target = args.targets.split(",")[0] if args.targets != ",".join(TARGETS) else "bridge"
            result = run_targets([target], args.profile, options, workdir, profile=out)[0]
            print(table([result]))
            if "profile_error" in result:
                print("py-spy failed:", result["profile_error"])
            else:
                print()
                print(summarize_profile(out))
                kept = ROOT / "bench" / "results"
                kept.mkdir(exist_ok=True)
                (kept / f"media-profile-{target}-{args.profile}.raw").write_text(out.read_text())
            return
        results = []
        targets = args.targets.split(",")
        groups = [targets] if args.together else [[t] for t in targets]
        for calls in [int(n) for n in args.calls.split(",")]:
            for group in [g for _ in range(args.repeat) for g in groups]:
                for result in run_targets(group, calls, options, workdir):
                    results.append(result)
                    print(progress_line(result), flush=True)
        print()
        print(table(results))
        if args.repeat > 1:
            print()
            print(f"Medians of {args.repeat} runs:")
            print()
            print(table(medians(results)))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        load_parser = argparse.ArgumentParser()
        load_parser.add_argument("_load")
        for name in ("--targets", "--run-prefix", "--pids"):
            load_parser.add_argument(name, required=True)
        for name in ("--calls",):
            load_parser.add_argument(name, type=int, required=True)
        for name in ("--window", "--warmup", "--ramp", "--deadline"):
            load_parser.add_argument(name, type=float, required=True)
        load_main(load_parser.parse_args())
    else:
        main()
