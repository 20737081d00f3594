"""Stopping a background loop and the tasks it started, within a grace period."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def finish_tasks(loop_task: asyncio.Task[Any] | None, tasks: Iterable[asyncio.Task[Any]], grace: float) -> None:
    """Wait for `loop_task` (already told to stop), give `tasks` up to `grace` seconds to
    finish, and cancel what is left."""
    if loop_task is not None:
        await asyncio.gather(loop_task, return_exceptions=True)
    running = set(tasks)
    if running:
        _, pending = await asyncio.wait(running, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
