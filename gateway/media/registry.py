"""The media sessions this process owns, by run id, and the control requests that reach them.

A hangup or `clear` asked of any instance is published through the store; every instance
hears it and the one that owns the call's media socket acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gateway.media")

INSTANCE_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


REPLACED = "replaced by a new media socket"


@dataclass
class _Claim:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    holders: int = 0


class SessionRegistry:
    """Live `MediaSession`s of this process: one per call (a new one replaces the old)."""

    def __init__(self) -> None:
        self._sessions: dict[str, Any] = {}
        self._claims: dict[str, _Claim] = {}
        self._clearing: set[asyncio.Future[Any]] = set()  # clears asked by control messages, until done

    @contextlib.asynccontextmanager
    async def claiming(self, run_id: str) -> AsyncIterator[None]:
        """Held while a new session claims the call in the store and is added here, so that of
        two sockets of one call the one the store names the owner is the one that runs."""
        claim = self._claims.setdefault(run_id, _Claim())
        claim.holders += 1
        try:
            async with claim.lock:
                yield
        finally:
            claim.holders -= 1
            if not claim.holders:
                del self._claims[run_id]

    def add(self, run_id: str, session: Any) -> Any | None:
        """Make `session` the call's; the session it replaces (asked to end) or None."""
        old = self._sessions.get(run_id)
        self._sessions[run_id] = session
        if old is not None and old is not session:
            log.warning("media session of run=%s %s", run_id, REPLACED)
            old.end(REPLACED)
            return old
        return None

    def remove(self, run_id: str, session: Any) -> None:
        if self._sessions.get(run_id) is session:
            del self._sessions[run_id]

    def get(self, run_id: str) -> Any | None:
        return self._sessions.get(run_id)

    def __len__(self) -> int:
        return len(self._sessions)

    def handle_control(self, run_id: str, action: str, data: dict[str, Any]) -> None:
        """Store callback (on the loop): act if this process owns the call's media."""
        session = self._sessions.get(run_id)
        if session is None:
            return
        log.info("control %s for run=%s handled on %s", action, run_id, INSTANCE_ID)
        if action == "clear":
            task = asyncio.ensure_future(session.clear())
            self._clearing.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._clearing.discard)
        elif action == "hangup":
            session.end(str(data.get("reason") or "hangup requested"))
        elif action == "replaced" and data.get("session") != getattr(session, "session_id", None):
            session.end(REPLACED)  # the call's new media socket reached another instance
