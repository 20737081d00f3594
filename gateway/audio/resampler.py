"""Streaming polyphase resampling: state carried across frames, exact output counts, no drift.

``PolyphaseStream`` is the engine: it keeps the last few raw wire samples as filter history in
a fixed buffer, sees every complete block of input through a strided window view of that
buffer, gathers the windows into a float32 matrix through a decoder (which is where G.711 gets
decoded), and multiplies by the bank in one BLAS call. ``StreamingResampler`` is the public
int16 face of it; ``Transcoder`` drives it directly with wire bytes.

Counting is pure integer arithmetic on totals: after T input samples the stream has emitted
``(T // C) * P`` outputs, so every 10 or 20 ms frame yields exactly 10 or 20 ms, for ever; the
group delay is a fixed whole number of output samples, and ``flush`` returns the rest, so a
finished stream of T samples is exactly ``ceil(T * L / M) + delay`` samples long however it was cut.
"""

from __future__ import annotations

import numpy as np

from .codec import Decoder, Pcm16Decoder, Pcm16Encoder
from .filters import SUPPORTED_RATES, PolyphaseBank, polyphase_bank

_MAX_WINDOW_ELEMENTS = 1 << 18  # bounds scratch memory when one call brings a lot of audio
_BUFFERED_FRAMES_10MS = 12  # chunks up to 120 ms take the in-place path; longer ones are rare
_CACHED_FRAME_SHAPES = 4  # steady streams use one or two; odd chunkers must not grow memory
_dot = np.dot


class PolyphaseStream:
    """Block polyphase filter over raw wire samples, decoded on the fly by ``decoder.gather``.

    The raw samples live in one fixed ``bytearray``: filter history first, then what has
    arrived since. Window views over it are built once per block count and reused, so a
    frame costs a memcpy in, the gather, one matrix product, and a memmove of the history.
    Chunks too long for the buffer take a slower path through ``bytes`` with the same result.

    ``feed`` returns float32 outputs of shape ``(blocks, P)`` (a scratch buffer, valid until the
    next call) or ``None`` when no block completed; ``drain`` returns the end-of-stream tail.
    """

    def __init__(self, bank: PolyphaseBank, decoder: Decoder) -> None:
        self.bank = bank
        self._gather = decoder.gather
        self._dtype = decoder.dtype
        self._width = width = decoder.sample_width
        self._silence = decoder.silence  # the line before the first sample and after the last
        self._matrix = bank.matrix
        self._block_bytes = bank.block_in * width
        self._strides = (self._block_bytes, width)
        self._history_bytes = bank.history * width
        self._max_blocks = max(1, _MAX_WINDOW_ELEMENTS // bank.window)
        ten_ms = bank.src_rate // 100
        self._buffer = bytearray((bank.window + _BUFFERED_FRAMES_10MS * ten_ms) * width)
        self._capacity = len(self._buffer)
        self._memory = memoryview(self._buffer)
        # Per block count: the window view over the buffer and the output scratch it fills.
        self._frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget all history and counts (barge-in, or a new stream)."""
        self._memory[: self._history_bytes] = self._silence * self.bank.history
        self._fill = self._history_bytes  # bytes of history + pending input in the buffer
        self._bytes_in = 0
        self._blocks_out = 0

    @property
    def pending_samples(self) -> int:
        """Input samples waiting for their block to complete (< block_in)."""
        return (self._fill - self._history_bytes) // self._width

    def feed(self, data: bytes) -> np.ndarray | None:
        """Append whole raw samples; filter every complete block."""
        size = len(data)
        if size % self._width:
            raise ValueError(f"raw samples are {self._width} bytes wide, got {size} bytes")
        self._bytes_in += size
        fill = self._fill
        end = fill + size
        if end > self._capacity:
            return self._run(data)
        memory = self._memory
        memory[fill:end] = data
        blocks = (end - self._history_bytes) // self._block_bytes
        if not blocks:
            self._fill = end
            return None
        windows, y = self._frames.get(blocks) or self._frame(blocks)
        _dot(self._gather(windows), self._matrix, y)
        used = blocks * self._block_bytes
        memory[: end - used] = memory[used:end]
        self._fill = end - used
        self._blocks_out += blocks
        return y

    def _frame(self, blocks: int) -> tuple[np.ndarray, np.ndarray]:
        """The window view over the buffer for ``blocks`` blocks and its output scratch, cached."""
        frame = (
            np.ndarray((blocks, self.bank.window), self._dtype, self._buffer, 0, self._strides),
            np.empty((blocks, self.bank.block_out), dtype=np.float32),
        )
        if len(self._frames) < _CACHED_FRAME_SHAPES:
            self._frames[blocks] = frame
        return frame

    # -- the batched feed (gateway.audio.batch): ``stage``, copy the windows out, ``advance`` --

    def fits(self, size: int) -> bool:
        """True when ``size`` more bytes fit the buffer, so ``stage`` may take them."""
        return self._fill + size <= self._capacity

    def stage(self, data: bytes) -> np.ndarray | None:
        """``feed`` without the filtering: append whole raw samples (they must ``fit``) and return
        the raw windows of the blocks completed (a view into the buffer, valid until ``advance``),
        or ``None`` when none did. The caller filters the windows and then calls ``advance``."""
        size = len(data)
        if size % self._width:
            raise ValueError(f"raw samples are {self._width} bytes wide, got {size} bytes")
        self._bytes_in += size
        fill = self._fill
        end = fill + size
        self._memory[fill:end] = data
        self._fill = end
        blocks = (end - self._history_bytes) // self._block_bytes
        if not blocks:
            return None
        return (self._frames.get(blocks) or self._frame(blocks))[0]

    def advance(self, blocks: int) -> None:
        """Drop the ``blocks`` staged blocks' input, keeping the history the next ones need."""
        used = blocks * self._block_bytes
        end = self._fill
        self._memory[: end - used] = self._memory[used:end]
        self._fill = end - used
        self._blocks_out += blocks

    def drain(self) -> np.ndarray:
        """Pad with silence to the end of the delayed signal, return the float tail, and reset.

        A stream that never received a sample has no tail.
        """
        bank = self.bank
        if not self._bytes_in:
            self.reset()
            return np.empty(0, dtype=np.float32)
        samples_in = self._bytes_in // self._width
        total = -(-samples_in * bank.up // bank.down) + bank.delay
        remaining = total - self._blocks_out * bank.block_out
        blocks = -(-remaining // bank.block_out)
        pad = blocks * bank.block_in - self.pending_samples
        y = self._run(self._silence * pad)
        tail = np.empty(0, dtype=np.float32) if y is None else y.reshape(-1)[:remaining].copy()
        self.reset()
        return tail

    def _run(self, data: bytes) -> np.ndarray | None:
        """The general path: any amount of input, through an immutable ``bytes`` copy."""
        raw = bytes(self._memory[: self._fill]) + data
        blocks = (len(raw) - self._history_bytes) // self._block_bytes
        y = None
        if blocks > 0:
            y = np.empty((blocks, self.bank.block_out), dtype=np.float32)
            for start in range(0, blocks, self._max_blocks):
                n = min(self._max_blocks, blocks - start)
                offset = start * self._block_bytes
                windows = np.ndarray((n, self.bank.window), self._dtype, raw, offset, self._strides)
                _dot(self._gather(windows), self._matrix, y[start : start + n])
            self._blocks_out += blocks
        rest = raw[max(blocks, 0) * self._block_bytes :]
        self._memory[: len(rest)] = rest
        self._fill = len(rest)
        return y


class StreamingResampler:
    """Resample a stream of int16 samples between 8, 16, 24 and 48 kHz, frame by frame.

    Windowed-sinc (Kaiser) polyphase FIR, >= 60 dB stopband from the lower Nyquist, passband
    flat to 0.85 of it. Filter state carries across calls, so chunking never changes the result
    (up to float summation order: at most 1 LSB). Output lags input by ``delay`` samples;
    ``flush`` returns that tail at end of stream. Equal rates pass samples straight through.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        for name, rate in (("src_rate", src_rate), ("dst_rate", dst_rate)):
            if rate not in SUPPORTED_RATES:
                raise ValueError(f"{name} must be one of {SUPPORTED_RATES}, got {rate!r}")
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._stream = (
            None if src_rate == dst_rate else PolyphaseStream(polyphase_bank(src_rate, dst_rate), Pcm16Decoder())
        )
        self._encoder = Pcm16Encoder()

    @property
    def passthrough(self) -> bool:
        """True when the rates are equal and samples are returned as given."""
        return self._stream is None

    @property
    def delay(self) -> int:
        """Group delay of the filter, in output samples."""
        return 0 if self._stream is None else self._stream.bank.delay

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next chunk (any length, int16, 1-D); returns the outputs it completed."""
        if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
            raise TypeError("samples must be a 1-D numpy int16 array")
        if self._stream is None:
            return samples
        return self._quantize(self._stream.feed(samples.astype("<i2", copy=False).tobytes()))

    def process_bytes(self, data: bytes) -> bytes:
        """As ``process``, for PCM16 little-endian bytes (an even number of them)."""
        if len(data) % 2:
            raise ValueError(f"PCM16 data must have an even number of bytes, got {len(data)}")
        if self._stream is None:
            return bytes(data)
        y = self._stream.feed(data)
        return b"" if y is None else self._encoder.quantize(y)

    def flush(self) -> np.ndarray:
        """End of stream: the remaining ``delay``-long tail; the resampler is then fresh again."""
        if self._stream is None:
            return np.empty(0, dtype=np.int16)
        return self._quantize(self._stream.drain())

    def flush_bytes(self) -> bytes:
        """As ``flush``, as PCM16 little-endian bytes."""
        return self.flush().astype("<i2", copy=False).tobytes()

    def reset(self) -> None:
        """Drop history and buffered input at once (barge-in)."""
        if self._stream is not None:
            self._stream.reset()

    def _quantize(self, y: np.ndarray | None) -> np.ndarray:
        if y is None:
            return np.empty(0, dtype=np.int16)
        return self._encoder.quantize_array(y).reshape(-1)
