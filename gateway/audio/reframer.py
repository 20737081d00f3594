"""Cut audio of any length into the exact frames a provider expects."""

from __future__ import annotations


class Reframer:
    """Buffers bytes and hands back whole ``frame_bytes``-long frames.

    ``silence`` is one sample of silence in the wire encoding (``b"\\xff"`` for μ-law,
    ``b"\\x00\\x00"`` for PCM16); its length is the sample width, so a flushed partial frame is
    padded sample by sample and a dangling half sample is dropped rather than misaligning audio.
    Bytes are only ever concatenated, never split, so PCM16 arriving with odd byte counts stays
    aligned across pushes.
    """

    def __init__(self, frame_bytes: int, silence: bytes) -> None:
        if not silence:
            raise ValueError("silence must be one sample of silence, got empty bytes")
        if frame_bytes <= 0 or frame_bytes % len(silence):
            raise ValueError(
                f"frame_bytes must be a positive multiple of the {len(silence)}-byte sample, got {frame_bytes!r}"
            )
        self.frame_bytes = frame_bytes
        self.silence = bytes(silence)
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes buffered towards the next frame (always < ``frame_bytes``)."""
        return len(self._buffer)

    def push(self, data: bytes) -> list[bytes]:
        """Add audio; return every frame it completed (possibly none)."""
        size = self.frame_bytes
        buffer = self._buffer
        if not buffer and len(data) == size:  # the steady state: frames already the right size
            return [bytes(data)]
        buffer += data
        whole = len(buffer) - len(buffer) % size
        if not whole:
            return []
        view = memoryview(buffer)
        frames = [bytes(view[i : i + size]) for i in range(0, whole, size)]
        view.release()
        del buffer[:whole]
        return frames

    def flush(self) -> list[bytes]:
        """End of audio: the last partial frame padded with silence (or nothing if none is pending)."""
        buffer = self._buffer
        usable = len(buffer) - len(buffer) % len(self.silence)
        if not usable:
            buffer.clear()
            return []
        missing = (self.frame_bytes - usable) // len(self.silence)
        frame = bytes(buffer[:usable]) + self.silence * missing
        buffer.clear()
        return [frame]

    def clear(self) -> None:
        """Drop whatever is buffered (barge-in)."""
        self._buffer.clear()
