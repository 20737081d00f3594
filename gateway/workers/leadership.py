"""Once-per-database jobs among workers: an exclusive `flock` on a file, held while the worker lives.

The kernel drops a dead process's locks, so when the leading worker dies (even by SIGKILL) the
next worker that asks takes over. Used for the SQLite store's `hold_leadership` (the campaign
runner) and for the recording sweep of a data directory (shared by every worker).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Awaitable, Callable


class FileLeadership:
    """Leadership of named jobs, each an exclusive lock on `<prefix>.<name>.lock`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._held: dict[str, int] = {}

    def hold(self, name: str) -> bool:
        """True while this process holds `name` (taken now when it is free)."""
        if name in self._held:
            return True
        os.makedirs(os.path.dirname(self.prefix) or ".", exist_ok=True)
        fd = os.open(f"{self.prefix}.{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._held[name] = fd
        return True

    def release_all(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


async def when_leading(
    leadership: FileLeadership, name: str, job: Callable[[], Awaitable[None]], every: float = 5.0
) -> None:
    """Run `job` once this process leads `name` (asked every `every` seconds until it does)."""
    while not leadership.hold(name):
        await asyncio.sleep(every)
    await job()
