"""Fan-out: which subscriptions an event goes to. Called inside the store's transaction, so
it is pure, thread-safe and cheap (one dict lookup per event type after the first)."""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.events.envelope import Event


@dataclass(frozen=True)
class Route:
    """A subscription as fan-out sees it: its name, event globs, and per-call ordering."""

    name: str
    patterns: tuple[str, ...]
    ordered: bool = True


class EventFanout:
    """Maps an event to `(subscription, ordered)` pairs; globs are matched once per type."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._by_type: dict[str, tuple[tuple[str, bool], ...]] = {}
        self._lock = threading.Lock()

    def targets(self, event_type: str) -> tuple[tuple[str, bool], ...]:
        found = self._by_type.get(event_type)
        if found is None:
            found = tuple(
                (route.name, route.ordered)
                for route in self.routes
                if any(fnmatch.fnmatchcase(event_type, pattern) for pattern in route.patterns)
            )
            with self._lock:
                self._by_type[event_type] = found
        return found

    def __call__(self, event: Event) -> Sequence[tuple[str, bool]]:
        return self.targets(event.type)


def fanout_for(subscriptions: Iterable[Any]) -> EventFanout:
    """The fan-out over the enabled ones of configured subscriptions (`webhooks:` entries)."""
    return EventFanout(Route(s.name, tuple(s.events), s.ordered) for s in subscriptions if s.enabled)
