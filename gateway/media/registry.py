"""The media sessions this process owns, by run id, and the control requests that reach them.

A hangup or `clear` asked of any instance is published through the store; every instance
hears it and the one that owns the call's media socket acts on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

log = logging.getLogger("gateway.media")

INSTANCE_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class SessionRegistry:
    """Live `MediaSession`s of this process."""

    def __init__(self) -> None:
        self._sessions: dict[str, Any] = {}

    def add(self, run_id: str, session: Any) -> None:
        self._sessions[run_id] = session

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
            asyncio.ensure_future(session.clear())
        elif action == "hangup":
            session.end(str(data.get("reason") or "hangup requested"))
