"""The calls this process has seen live, until they end: what a graceful drain waits for.

A call is noted when this process answers it, dials it or accepts a callback or a media
stream for it in a non-terminal state, and forgotten when a callback it accepts ends it (or,
while draining, when the store says it ended: a callback another instance took). Plain data,
no I/O but `settle`, which asks the store.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.calls.record import CallRecord
from gateway.store.base import Store, StoreError

log = logging.getLogger("gateway")

SHUTDOWN_UNFINISHED = "shutdown.unfinished"  # the timeline entry of a call still live when the process exits
MAX_MARKED = 1000  # calls marked at exit one by one (a write each): the rest are counted in one line


class LiveCalls:
    """Run ids of live calls, oldest first; at most `max_calls` (the oldest are forgotten first:
    a call whose ending never came must not grow the set for ever)."""

    def __init__(self, max_calls: int = 100_000) -> None:
        self.max_calls = max_calls
        self._runs: dict[str, None] = {}

    def note(self, record: CallRecord) -> None:
        """Record what a call's latest accepted update left it in."""
        run_id = record.workflow_run_id
        if record.state.terminal:
            self._runs.pop(run_id, None)
            return
        if run_id not in self._runs:
            self._runs[run_id] = None
            if len(self._runs) > self.max_calls:
                del self._runs[next(iter(self._runs))]

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def runs(self) -> list[str]:
        return list(self._runs)

    async def settle(self, store: Store, limit: int = MAX_MARKED) -> None:
        """Forget the calls the store has seen end (through another instance, a reconciliation);
        the oldest `limit` are looked up."""
        for run_id in self.runs()[:limit]:
            try:
                record = await store.get_call(run_id)
            except StoreError:
                return
            if record is None or record.state.terminal:
                self._runs.pop(run_id, None)

    async def mark_unfinished(self, store: Store, drain_seconds: float, limit: int = MAX_MARKED) -> None:
        """At exit: each call still live (up to `limit`, oldest first; then one line with the
        count) gets a timeline entry and a log line, so an operator can find the calls whose
        ending this process did not see."""
        runs = self.runs()
        for run_id in runs[:limit]:
            data: dict[str, Any] = {
                "reason": f"the gateway shut down before the call ended (drain_seconds {drain_seconds:g})"
            }
            try:
                record = await store.get_call(run_id)
                if record is None or record.state.terminal:
                    continue
                data["state"] = record.state.value
                await store.record_activity(run_id, source="gateway", kind=SHUTDOWN_UNFINISHED, data=data)
            except StoreError as exc:
                log.warning("could not mark call run=%s unfinished at shutdown: %s", run_id, exc)
            log.warning(
                "call run=%s is still %s at shutdown: its ending was not seen by this process",
                run_id,
                data.get("state", "live"),
                extra={"run_id": run_id},
            )
        if len(runs) > limit:
            log.warning(
                "%d more calls were still live at shutdown and are not marked (newest first: %s)",
                len(runs) - limit,
                ", ".join(reversed(runs[-5:])),
            )
