"""Outbound playback pacing: what may be sent to the provider now. Pure (the caller passes time).

The provider plays what it is sent in real time. The gateway keeps at most `lead` seconds of
audio ahead of the provider's playhead, so a barge-in `clear` silences the caller within that
lead, and everything else waits in this queue, where `clear()` can drop it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

FRAME = 0
MARK = 1


@dataclass(slots=True)
class PendingMark:
    """A mark the agent set, due when the audio queued before it has played."""

    name: str
    plays_at: float


class PlaybackQueue:
    """Frames and marks in order; `take_due(now)` releases what fits inside the lead."""

    def __init__(self, *, frame_seconds: float = 0.02, lead_seconds: float = 0.16, max_frames: int = 3000) -> None:
        self.frame_seconds = frame_seconds
        self.lead_seconds = lead_seconds
        self.max_frames = max_frames
        self._items: deque[tuple[int, object]] = deque()
        self._frames = 0
        self.played_until = 0.0  # when the provider finishes playing what was sent
        self.dropped = 0  # frames refused because the queue was full

    def __len__(self) -> int:
        return self._frames

    def push_frame(self, frame: bytes) -> bool:
        """Queue one provider-sized frame; False (and counted) when the queue is full."""
        if self._frames >= self.max_frames:
            self.dropped += 1
            return False
        self._items.append((FRAME, frame))
        self._frames += 1
        return True

    def push_mark(self, name: str) -> None:
        self._items.append((MARK, name))

    def take_due(self, now: float) -> list[tuple[int, object]]:
        """Items to send now: frames while the lead allows, and the marks between them.

        A released mark comes back as `(MARK, PendingMark)` with the time its audio ends.
        """
        if self.played_until < now:
            self.played_until = now  # the provider went idle; its playhead restarts now
        out: list[tuple[int, object]] = []
        items = self._items
        while items:
            kind, value = items[0]
            if kind == MARK:
                items.popleft()
                out.append((MARK, PendingMark(str(value), self.played_until)))
                continue
            if self.played_until + self.frame_seconds - now > self.lead_seconds + 1e-6:
                break
            items.popleft()
            self._frames -= 1
            self.played_until += self.frame_seconds
            out.append((FRAME, value))
        return out

    def wait_time(self, now: float) -> float | None:
        """Seconds until the next queued frame may go; None when nothing waits."""
        if not self._items:
            return None
        return max(0.0, self.played_until + self.frame_seconds - self.lead_seconds - now)

    def clear(self, now: float) -> list[str]:
        """Drop everything queued (barge-in); returns the names of the marks dropped."""
        marks = [str(value) for kind, value in self._items if kind == MARK]
        self._items.clear()
        self._frames = 0
        self.played_until = now
        return marks
