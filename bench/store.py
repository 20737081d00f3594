"""The store's share of a webhook event, measured on its own: CPU per event of the writer.

Drives a real store through what one status callback and its delivery cost it: `apply_update`
for a new call's `ringing` (the call, its timeline entry, the event and a delivery row leased
to a direct dispatch), then `finish_deliveries` for that delivery's successful attempt, with
`--concurrency` callbacks in flight at once (the group commit's group size), and reports the
CPU of the process per event (the writer thread does nearly all of it; the loop only awaits).

    .venv/bin/python bench/store.py                      # SQLite, 20,000 events, 16 at once
    .venv/bin/python bench/store.py --concurrency 64 --events 40000
    .venv/bin/python bench/store.py --store 'sqlite?synchronous=normal'
    .venv/bin/python bench/store.py --profile /tmp/store.txt    # py-spy of the run (raw)

Run by hand; the numbers are for comparing one version of the store's code with another on
the same machine (`--gateway-root` runs another checkout's), not targets.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    from gateway.calls.lifecycle import CallUpdate
    from gateway.calls.states import CallState
    from gateway.events.fanout import EventFanout, Route
    from gateway.store import open_store_for
    from gateway.store.base import AttemptRecord, DeliveryResult, DirectDispatch

    url = args.store
    if url == "sqlite" or url.startswith("sqlite?"):
        url = f"sqlite:///{workdir / 'bench.db'}" + url[len("sqlite"):]
    store = open_store_for(url)
    leased: list = []
    store.set_fanout(EventFanout([Route("bench", ("call.*",), True)]))
    store.set_dispatch(DirectDispatch(owner="bench", lease_seconds=60, room=lambda name: 1 << 30, deliver=leased.extend))
    await store.open()
    params = {"CallSid": "", "AccountSid": "AC" + "b" * 32, "CallStatus": "ringing", "From": "+15550100",
              "To": "+15550199", "Direction": "outbound-api", "ApiVersion": "2010-04-01"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.events):
        queue.put_nowait(i)

    async def callbacks() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            sid = f"CA{i:032x}"
            update = CallUpdate(provider="twilio", provider_call_id=sid, raw_status="ringing", state=CallState.RINGING,
                                from_number="+15550100", to_number="+15550199", direction="outbound",
                                params={**params, "CallSid": sid})
            await store.apply_update(update, run_id=f"run-{i}")

    async def finishes() -> None:
        done = 0
        while done < args.events:
            if not leased:
                await asyncio.sleep(0.001)
                continue
            batch = leased[:]
            del leased[:]
            at = datetime.now(timezone.utc)
            request = {"method": "POST", "url": "http://127.0.0.1:9/hooks",
                       "headers": {"Content-Type": "application/json", "webhook-id": "msg_x", "webhook-timestamp": "1",
                                   "webhook-signature": "v1,[redacted]"}}
            await store.finish_deliveries("bench", [
                (d, DeliveryResult("succeeded", AttemptRecord(at, "success", status=200, latency_ms=1.0, request=request),
                                   endpoint_ok=True)) for d in batch])
            done += len(batch)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(finishes(), *(callbacks() for _ in range(args.concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await store.close()
    return {"events": args.events, "cpu_us_per_event": cpu / args.events * 1e6, "wall_us_per_event": wall / args.events * 1e6,
            "events_per_s": args.events / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite", help="'sqlite' (a fresh file; 'sqlite?synchronous=normal'), or a store URL")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16, help="callbacks in flight at once")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", metavar="FILE", help="py-spy record (raw) into FILE")
    parser.add_argument("--gateway-root", metavar="DIR", help="import the gateway package from DIR (A/B runs)")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gateway_root:
        sys.path.insert(0, args.gateway_root)
    else:
        sys.path.insert(0, str(ROOT))
    if args.profile and not args._child:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        argv = [sys.executable, __file__, "--_child", *[a for a in sys.argv[1:] if a not in (args.profile,)]]
        argv = [a for a in argv if a != "--profile"]
        return subprocess.call([spy, "record", "--format", "raw", "--threads", "--rate", "250", "-o", args.profile,
                                "--", *argv])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = []
    for _ in range(args.repeat):
        workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
        try:
            results.append(asyncio.run(run(args, workdir)))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        r = results[-1]
        print(f"{r['events']} events, {args.concurrency} at once: {r['cpu_us_per_event']:.0f} us CPU per event, "
              f"{r['wall_us_per_event']:.0f} us wall ({r['events_per_s']:,.0f} events/s)", flush=True)
    best = min(r["cpu_us_per_event"] for r in results)
    print(f"best of {len(results)}: {best:.0f} us CPU per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
