"""What the bench's PostgreSQL database does during a run: where its backends wait, and which
server processes count as the database's CPU.

`PgActivity` samples `pg_stat_activity` every `period` seconds (one query each) for the client
backends of one database (the bench's own: other databases on the server, such as the test
suite's, are left out), and keeps the database's processes in a pid list that the bench's CPU
sampler reads: those backends plus the server's own background processes (WAL writer,
checkpointer...), which serve every database.

Per run it reports the average number of this database's backends that were active (running a
statement), waiting on a heavyweight lock (`Lock`: advisory, row or transaction locks), on an
LWLock, on I/O (`WALSync`, `DataFileRead`...), and idle inside a transaction (waiting for the
gateway to send its next statement: the client's time, not the database's).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any

_SAMPLE = (
    "SELECT pid, datname, backend_type, state, wait_event_type, wait_event FROM pg_stat_activity"
    " WHERE pid <> pg_backend_pid() AND (datname = $1 OR datname IS NULL)"
)


class PgActivity:
    """A thread sampling one database's activity; `pids` grows with the processes it sees."""

    def __init__(self, dsn: str, database: str, pids: list[int], period: float = 0.1) -> None:
        self.dsn = dsn
        self.database = database
        self.pids = pids
        self.period = period
        self.samples: list[tuple[float, list[tuple[str, str | None, str | None]]]] = []  # (time, [(state, type, event)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.error: str | None = None

    async def _run(self) -> None:
        import asyncpg

        try:
            conn = await asyncpg.connect(self.dsn)
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on without it
            self.error = f"{type(exc).__name__}: {exc}"
            return
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(_SAMPLE, self.database)
                seen = set(self.pids)
                self.pids.extend(r["pid"] for r in rows if r["pid"] not in seen)
                self.samples.append((time.time(), [
                    (r["state"] or "", r["wait_event_type"], r["wait_event"]) for r in rows
                    if r["datname"] == self.database and r["backend_type"] == "client backend"]))
                await asyncio.sleep(self.period)
        finally:
            await conn.close()

    def start(self) -> "PgActivity":
        self._thread.start()
        deadline = time.time() + 5
        while not self.samples and self.error is None and time.time() < deadline:
            time.sleep(0.02)  # the database's processes are known before the window starts
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Average backends of the database in each condition over [start, end], and the
        most frequent wait events (`waits`: event -> average backends waiting on it)."""
        inside = [rows for at, rows in self.samples if start <= at <= end]
        if not inside:
            return {"samples": 0, "error": self.error}
        n = len(inside)
        counts: collections.Counter[str] = collections.Counter()
        waits: collections.Counter[str] = collections.Counter()
        for rows in inside:
            for state, kind, event in rows:
                if state == "active":
                    counts["active"] += 1
                    if kind:
                        counts[f"wait_{kind}"] += 1
                        waits[f"{kind}:{event}"] += 1
                elif state.startswith("idle in transaction"):
                    counts["idle_in_transaction"] += 1
                counts["connections"] += 1
        out: dict[str, Any] = {"samples": n, **{name: value / n for name, value in counts.items()}}
        out["waits"] = {name: round(value / n, 3) for name, value in waits.most_common(8)}
        return out


def summary(activity: dict[str, Any]) -> str:
    """One line for the bench's report."""
    if not activity.get("samples"):
        return f"database activity: not sampled ({activity.get('error') or 'no samples in the window'})"
    parts = [f"{name.removeprefix('wait_')} {activity.get(name, 0.0):.2f}" for name in
             ("active", "wait_Lock", "wait_LWLock", "wait_IO", "wait_Client", "idle_in_transaction")]
    waits = ", ".join(f"{name} {value:.2f}" for name, value in activity["waits"].items())
    return (f"database backends (average of {activity['samples']} samples, {activity.get('connections', 0):.1f} connected): "
            + ", ".join(parts) + (f"; top waits: {waits}" if waits else ""))
