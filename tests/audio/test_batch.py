"""The batched transcoding core: every stream's output is bit for bit what its own Transcoder gives.

Random streams of every kind (resampling both ways, G.711 and PCM16 at every rate, same-rate
conversions, passthrough), random interleavings (a stream may have several chunks in one batch),
random chunk sizes (20 ms frames, partial frames, single blocks, odd PCM16 bytes, chunks bigger
than the stream's buffer, empty ones), each batch run through ``BatchTranscoder`` and compared
with the same streams fed chunk by chunk through ``Transcoder.process``; G.711 outputs also
against audioop's encoding of what the int16 resampler makes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audio import TWILIO_FORMAT, VONAGE_FORMAT, AudioFormat, StreamingResampler, Transcoder, polyphase_bank
from gateway.audio import batch as batch_module
from gateway.audio.batch import BatchTranscoder, product_rows, rows_independent

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FORMATS = [
    TWILIO_FORMAT,
    AudioFormat("alaw", 8000),
    AudioFormat("pcm16", 8000),
    VONAGE_FORMAT,
    AudioFormat("pcm16", 24000),
    AudioFormat("pcm16", 48000),
    AudioFormat("mulaw", 16000),
]
KINDS = [(a, b) for a in FORMATS for b in FORMATS]


def noise(rng: np.random.Generator, size: int) -> bytes:
    """Wire bytes: full-range codes, or PCM16 up to full scale (the filter overshoots and saturates)."""
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[AudioFormat, AudioFormat]], list[list[tuple[int, int]]]]:
    """Streams (kinds) and batches: each batch a list of (stream, chunk bytes)."""
    kinds = draw(
        st.lists(
            st.one_of(
                st.sampled_from([(TWILIO_FORMAT, VONAGE_FORMAT), (VONAGE_FORMAT, TWILIO_FORMAT)]),
                st.sampled_from(KINDS),
            ),
            min_size=1,
            max_size=12,
        )
    )
    batches = []
    for _ in range(draw(st.integers(1, 12))):
        jobs = []
        for _ in range(draw(st.integers(1, 3 * len(kinds)))):
            stream = draw(st.integers(0, len(kinds) - 1))
            src, dst = kinds[stream]
            frame = src.frame_bytes()
            block = (
                polyphase_bank(src.sample_rate, dst.sample_rate).block_in * src.bytes_per_sample
                if src.sample_rate != dst.sample_rate
                else 2
            )
            size = draw(
                st.one_of(
                    st.just(frame),
                    st.sampled_from([block, block + 1, 2 * block]),
                    st.sampled_from([0, 1, 2, 3, frame - 1, frame + 1, frame // 2, 2 * frame, 7 * frame, 40 * frame]),
                    st.integers(0, 3 * frame),
                )
            )
            jobs.append((stream, size))
        batches.append(jobs)
    return kinds, batches


@settings(max_examples=200)
@given(scenarios(), st.integers(0, 2**32 - 1))
def test_batched_equals_each_stream_alone(scenario, seed) -> None:
    kinds, batches = scenario
    rng = np.random.default_rng(seed)
    alone = [Transcoder(src, dst) for src, dst in kinds]
    batched = [Transcoder(src, dst) for src, dst in kinds]
    core = BatchTranscoder(min_group=2)
    for jobs in batches:
        chunks = [noise(rng, size) for s, size in jobs]
        expected = [alone[s].process(chunk) for (s, _), chunk in zip(jobs, chunks, strict=False)]
        got = core.run([(batched[s], chunk) for (s, _), chunk in zip(jobs, chunks, strict=False)])
        assert got == expected
        assert all(isinstance(out, bytes) for out in got)
    assert [t.flush() for t in batched] == [t.flush() for t in alone]


def test_a_batch_of_twilio_and_vonage_calls_takes_the_batched_path_and_matches_audioop(monkeypatch) -> None:
    """100 calls' frames in one batch, both directions: G.711 codes are audioop's encoding of the
    int16 resampler's output, and PCM16 out is the resampler's output of audioop's decoding."""
    rng = np.random.default_rng(5)
    calls = 100
    up = [Transcoder(TWILIO_FORMAT, VONAGE_FORMAT) for _ in range(calls)]
    down = [Transcoder(VONAGE_FORMAT, TWILIO_FORMAT) for _ in range(calls)]
    up_ref = [StreamingResampler(8000, 16000) for _ in range(calls)]
    down_ref = [StreamingResampler(16000, 8000) for _ in range(calls)]
    core = BatchTranscoder(min_group=2)
    staged = 0
    original = batch_module.BatchTranscoder._group

    def counting(self, kind, jobs, members, out):  # the group path ran, with every stream in it
        nonlocal staged
        staged += len(members)
        return original(self, kind, jobs, members, out)

    monkeypatch.setattr(batch_module.BatchTranscoder, "_group", counting)
    for _ in range(10):
        ulaw = [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(calls)]
        pcm = [(rng.standard_normal(320) * 12000).clip(-32768, 32767).astype("<i2").tobytes() for _ in range(calls)]
        out = core.run(
            [(t, f) for t, f in zip(up, ulaw, strict=False)] + [(t, f) for t, f in zip(down, pcm, strict=False)]
        )
        for i in range(calls):
            assert out[i] == up_ref[i].process_bytes(audioop.ulaw2lin(ulaw[i], 2))
            assert out[calls + i] == audioop.lin2ulaw(down_ref[i].process_bytes(pcm[i]), 2)
    assert staged == 10 * 2 * calls


def assert_twilio_frames_batched_as_alone(calls: int, rounds: int, seed: int) -> None:
    """``calls`` Twilio->Vonage streams, a random frame each per round, batched == each alone."""
    rng = np.random.default_rng(seed)
    alone = [Transcoder(TWILIO_FORMAT, VONAGE_FORMAT) for _ in range(calls)]
    batched = [Transcoder(TWILIO_FORMAT, VONAGE_FORMAT) for _ in range(calls)]
    core = BatchTranscoder(min_group=2)
    for _ in range(rounds):
        frames = [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(calls)]
        expected = [t.process(f) for t, f in zip(alone, frames, strict=True)]
        assert core.run(list(zip(batched, frames, strict=True))) == expected


def test_below_min_group_frames_take_process() -> None:
    """Three frames of a kind with the shipped threshold of four: no group work, same bytes."""
    core = BatchTranscoder()
    assert core.min_group == batch_module.MIN_GROUP == 4
    streams = [Transcoder(TWILIO_FORMAT, VONAGE_FORMAT) for _ in range(3)]
    refs = [Transcoder(TWILIO_FORMAT, VONAGE_FORMAT) for _ in range(3)]
    frame = bytes(range(160))
    grouped: list[int] = []
    core._group = lambda kind, jobs, members, out: grouped.append(len(members))  # type: ignore[method-assign]
    assert core.run([(t, frame) for t in streams]) == [r.process(frame) for r in refs]
    assert grouped == []


def test_more_windows_than_one_product_takes_are_cut_and_stay_exact() -> None:
    """Enough streams that the group's windows need several products, none of them one row."""
    bank = polyphase_bank(8000, 16000)
    rows = product_rows(bank)
    calls = rows // 8 * 3 + 1  # 20 ms = 8 blocks each: three and a bit products
    assert_twilio_frames_batched_as_alone(calls, rounds=3, seed=9)


@pytest.mark.parametrize("limit", [4_000_000])
def test_the_row_probe_tells_the_truth_and_a_failing_bank_is_not_batched(monkeypatch, limit) -> None:
    """Products big enough for OpenBLAS's blocked kernel: the probe's verdict is what a direct
    comparison finds, and batched output stays exact either way (a bank that fails is not batched)."""
    monkeypatch.setattr(batch_module, "SMALL_PRODUCT", limit)
    rows_independent.cache_clear()
    try:
        bank = polyphase_bank(8000, 16000)
        rows = product_rows(bank)
        x = np.random.default_rng(1).integers(-32768, 32768, (rows, bank.window)).astype(np.float32)
        small = np.concatenate([np.dot(x[i : i + 8], bank.matrix) for i in range(0, rows - rows % 8, 8)])
        truth = np.array_equal(np.dot(x, bank.matrix)[: len(small)], small)
        assert rows_independent(bank) is truth
        assert_twilio_frames_batched_as_alone(rows // 8 + 5, rounds=2, seed=2)
    finally:
        rows_independent.cache_clear()


def test_the_shipped_bound_keeps_rows_independent_for_every_bank() -> None:
    """On the BLAS the tests run with, every supported rate pair is batched (none falls back)."""
    rates = (8000, 16000, 24000, 48000)
    for a in rates:
        for b in rates:
            if a != b:
                assert rows_independent(polyphase_bank(a, b)), (a, b)


def test_streams_that_complete_one_block_each_match_their_one_row_products() -> None:
    """numpy takes a 1-row product through gemv, whose sums differ from the batch's gemm in the
    last bit, which rounding shows now and then: hundreds of streams, so it would show here."""
    block = polyphase_bank(8000, 16000).block_in
    calls = 300
    rng = np.random.default_rng(4)
    alone = [Transcoder(TWILIO_FORMAT, VONAGE_FORMAT) for _ in range(calls)]
    batched = [Transcoder(TWILIO_FORMAT, VONAGE_FORMAT) for _ in range(calls)]
    core = BatchTranscoder(min_group=2)
    for sizes in ([block] * calls, [block, 160] * (calls // 2), [block] * calls, [block - 1] * calls, [1] * calls):
        chunks = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
        assert core.run(list(zip(batched, chunks, strict=False))) == [
            t.process(c) for t, c in zip(alone, chunks, strict=False)
        ]


def test_an_empty_batch_and_a_stream_alone() -> None:
    core = BatchTranscoder(min_group=2)
    assert core.run([]) == []
    t, ref = Transcoder(TWILIO_FORMAT, VONAGE_FORMAT), Transcoder(TWILIO_FORMAT, VONAGE_FORMAT)
    frame = bytes(range(160))
    assert core.run([(t, frame)]) == [ref.process(frame)]
    assert core.run([(t, frame), (t, frame)]) == [ref.process(frame), ref.process(frame)]
