"""Transcode the next chunk of many streams at once: one gather, one product, one quantize per kind.

A frame alone costs a handful of numpy calls whose fixed cost dwarfs the arithmetic on 160
samples. Given the frames of every call that are ready together, this does the numpy work once
per conversion kind (source and destination format) for all of them: each stream copies its
frame into its own filter buffer (plain ``bytearray`` work), the windows of every stream's
completed blocks are copied into one matrix, decoded in one gather, filtered in one product and
rounded, saturated and encoded in one pass; each stream then gets its slice of the bytes.

The result for every stream is bit for bit what its own ``Transcoder.process`` returns for the
same chunk, which holds because:

* every step but the product is elementwise;
* each output row of the product depends only on its own window, as long as every product is
  done by the same BLAS kernel. OpenBLAS serves a product of M x K by K x N with M*N*K up to
  ``SMALL_PRODUCT`` with its small-matrix kernel, whose sums for a row do not depend on M (it
  switches to its blocked, possibly threaded kernel above that, and numpy takes a 1-row product
  through gemv): so products are cut to at most ``SMALL_PRODUCT`` and never to one row, and a
  stream that completed a single block is filtered on its own, as ``process`` would;
* a kind whose bank fails that check (another BLAS, another kernel) is not batched: the first
  batch of each bank compares one big product with the same rows cut in small products
  (``rows_independent``) and, if they differ, those streams take ``process``.

Streams that resample nothing, or bring more than their buffer holds, take ``process`` too, and
so do the frames of a kind with fewer than ``min_group`` of them in the batch (too few to pay).
A stream appearing more than once in a batch is served in order, one chunk per round.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise

import numpy as np

from .codec import Encoder, Gather, decoder_for, encoder_for
from .filters import PolyphaseBank
from .resampler import PolyphaseStream
from .transcoder import Transcoder

log = logging.getLogger(__name__)

MIN_GROUP = 4
"""Fewest frames of one kind worth a batch: below it each takes ``process`` (bench/codec.py --batch)."""
SMALL_PRODUCT = 1_000_000
"""Largest M*N*K of one product (OpenBLAS's small-matrix kernel bound, measured: rows stop being
independent of M just above it)."""
_PROBE_SEED = 15


def product_rows(bank: PolyphaseBank) -> int:
    """Most windows one product of ``bank`` may take (the small-kernel bound, at least 4)."""
    return max(4, SMALL_PRODUCT // (bank.window * bank.block_out))


@cache
def rows_independent(bank: PolyphaseBank) -> bool:
    """True when a product of ``product_rows`` windows gives each row exactly as products of 2, 3
    and 8 rows do (what ``Transcoder.process`` computes for frames of that many blocks)."""
    rows = product_rows(bank)
    rng = np.random.default_rng(_PROBE_SEED)
    x = rng.integers(-32768, 32768, (rows, bank.window)).astype(np.float32)
    whole = np.dot(x, bank.matrix)
    for size in (2, 3, 8):
        cut = size * (rows // size)
        parts = np.concatenate([np.dot(x[i : i + size], bank.matrix) for i in range(0, cut, size)])
        if not np.array_equal(parts, whole[:cut]):
            log.warning(
                "audio batching is off for %d->%d Hz: this BLAS sums a row differently in products of "
                "%d and %d rows, so batched frames would not be bit-exact",
                bank.src_rate,
                bank.dst_rate,
                size,
                rows,
            )
            return False
    return True


@dataclass(frozen=True)
class _Kind:
    """What the streams of one conversion share: the filter, the decoder's gather, an encoder."""

    bank: PolyphaseBank
    gather: Gather
    encoder: Encoder
    rows: int  # most windows per product
    out_bytes: int  # bytes one block's outputs encode to
    pcm_in: bool  # PCM16 source: a chunk may end in half a sample
    exact: bool  # rows_independent(bank): batching is bit-exact


class BatchTranscoder:
    """Runs one batch of (transcoder, chunk) jobs; keeps only per-kind scratch, no stream state."""

    def __init__(self, min_group: int = MIN_GROUP) -> None:
        self._kinds: dict[str, _Kind] = {}
        self.min_group = max(2, min_group)

    def run(self, jobs: Sequence[tuple[Transcoder, bytes]]) -> list[bytes]:
        """Each job's output, exactly what ``transcoder.process(chunk)`` would return in job order."""
        out = [b""] * len(jobs)
        todo: Sequence[int] = range(len(jobs))
        while todo:
            seen: set[int] = set()
            later: list[int] = []
            groups: dict[str, list[int]] = {}
            for i in todo:
                transcoder = jobs[i][0]
                key = id(transcoder)
                if key in seen:  # the stream's next chunk: a later round, after this one
                    later.append(i)
                    continue
                seen.add(key)
                stream = transcoder.resampler
                if stream is None or not stream.fits(len(jobs[i][1]) + 1):
                    out[i] = transcoder.process(jobs[i][1])
                else:
                    members = groups.get(transcoder.kind)
                    if members is None:
                        groups[transcoder.kind] = [i]
                    else:
                        members.append(i)
            for members in groups.values():
                kind = self._kind(jobs[members[0]][0])
                if len(members) < self.min_group or not kind.exact:
                    for i in members:
                        out[i] = jobs[i][0].process(jobs[i][1])
                else:
                    self._group(kind, jobs, members, out)
            todo = later
        return out

    def _kind(self, transcoder: Transcoder) -> _Kind:
        kind = self._kinds.get(transcoder.kind)
        if kind is None:
            src, dst = transcoder.src, transcoder.dst
            bank = transcoder.resampler.bank  # type: ignore[union-attr]  # grouped: resampling
            kind = self._kinds[transcoder.kind] = _Kind(
                bank=bank,
                gather=decoder_for(src.encoding).gather,
                encoder=encoder_for(dst.encoding),
                rows=product_rows(bank),
                out_bytes=bank.block_out * dst.bytes_per_sample,
                pcm_in=src.bytes_per_sample == 2,
                exact=rows_independent(bank),
            )
        return kind

    def _group(
        self, kind: _Kind, jobs: Sequence[tuple[Transcoder, bytes]], members: list[int], out: list[bytes]
    ) -> None:
        """One kind's streams: stage each, copy all windows out, then one gather, product, quantize."""
        staged: list[tuple[int, PolyphaseStream, int]] = []  # (job, stream, blocks)
        windows: list[np.ndarray] = []
        pcm_in = kind.pcm_in
        for i in members:
            transcoder, data = jobs[i]
            stream: PolyphaseStream = transcoder.resampler  # type: ignore[assignment]  # grouped: resampling
            w = stream.stage(transcoder.whole_samples(data) if pcm_in else data)
            if w is None:
                continue
            blocks = len(w)
            if blocks == 1:  # numpy takes a 1-row product through gemv: filter it as process would
                y = np.dot(kind.gather(w), kind.bank.matrix)
                stream.advance(1)
                out[i] = kind.encoder.quantize(y)
                continue
            staged.append((i, stream, blocks))
            windows.append(w)
        if not windows:
            return
        raw = np.concatenate(windows)  # a copy: the buffers move on below
        total = len(raw)
        y = np.empty((total, kind.bank.block_out), dtype=np.float32)
        parts = -(-total // kind.rows)
        bounds = [total * k // parts for k in range(parts + 1)]
        matrix = kind.bank.matrix
        gather = kind.gather
        for a, b in pairwise(bounds):
            np.dot(gather(raw[a:b]), matrix, y[a:b])
        encoded = kind.encoder.quantize(y)
        offset = 0
        per_block = kind.out_bytes
        for i, stream, blocks in staged:
            stream.advance(blocks)
            end = offset + blocks * per_block
            out[i] = encoded[offset:end]
            offset = end
