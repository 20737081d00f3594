"""The audio contract (tests/audio/test_contract.py) over the batched path.

Every test of the contract runs again with its ``Transcoder`` replaced by ``Batched``: each chunk
goes through ``BatchTranscoder`` in one batch with a twin stream of the same kind fed the same
chunk, so the group path (stage, one gather, one product, one quantize, split) does the work.
"""

from __future__ import annotations

import pytest
from audio import test_contract
from audio.test_contract import *  # noqa: F403  (the contract's tests, collected here again)

from gateway.audio import AudioFormat, Transcoder
from gateway.audio.batch import BatchTranscoder


class Batched:
    """A Transcoder's face whose ``process`` runs a two-stream batch."""

    def __init__(self, src: AudioFormat, dst: AudioFormat) -> None:
        self.stream, self.twin = Transcoder(src, dst), Transcoder(src, dst)
        self.core = BatchTranscoder(min_group=2)
        self.delay = self.stream.delay

    def process(self, data: bytes) -> bytes:
        out, twin = self.core.run([(self.stream, data), (self.twin, data)])
        assert out == twin
        return out

    def flush(self) -> bytes:
        self.twin.flush()
        return self.stream.flush()

    def reset(self) -> None:
        self.stream.reset()
        self.twin.reset()


@pytest.fixture(autouse=True)
def batched_transcoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_contract, "Transcoder", Batched)
