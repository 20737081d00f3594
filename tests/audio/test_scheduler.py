"""The loop edge of batched transcoding, on a real asyncio loop: one batch per iteration, results
in submission order before the next iteration's callbacks, one call inline, settle and reset."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.audio import TWILIO_FORMAT, VONAGE_FORMAT, AudioFormat, Transcoder
from gateway.audio import batch, scheduler
from gateway.audio.scheduler import BatchScheduler, StreamTranscoder, stream_transcoder

rng = np.random.default_rng(15)


@pytest.fixture(autouse=True)
def batches_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two streams of a kind batch (the shipped thresholds are for speed, not for the logic)."""
    monkeypatch.setattr(scheduler, "MIN_STREAMS", 2)
    monkeypatch.setattr(batch, "MIN_GROUP", 2)
    monkeypatch.setattr(scheduler, "SPARSE_RUNS", 0)


def ulaw_frame() -> bytes:
    return rng.integers(0, 256, 160, dtype=np.uint8).tobytes()


def test_frames_of_one_iteration_are_one_batch_delivered_before_the_next_iterations_callbacks() -> None:
    async def main() -> None:
        scheduler = BatchScheduler.for_running_loop()
        assert BatchScheduler.for_running_loop() is scheduler
        calls = 20
        streams = [stream_transcoder(TWILIO_FORMAT, VONAGE_FORMAT, batching=True) for _ in range(calls)]
        refs = [Transcoder(TWILIO_FORMAT, VONAGE_FORMAT) for _ in range(calls)]
        got: list[list[bytes]] = [[] for _ in range(calls)]
        expected: list[list[bytes]] = [[] for _ in range(calls)]
        order: list[str] = []

        def deliver(i: int, out: bytes) -> None:
            got[i].append(out)
            order.append("delivered")

        async def call(i: int) -> None:  # a session's receive loop, woken with the others
            frame = ulaw_frame()
            expected[i].append(refs[i].process(frame))
            streams[i].submit(frame, lambda out: deliver(i, out))
            order.append("submitted")

        for n in range(1, 6):
            order.clear()
            tasks = [asyncio.create_task(call(i)) for i in range(calls)]
            await asyncio.sleep(0)  # the tasks' first steps run in this iteration, then this one
            assert order == ["submitted"] * calls and all(len(g) == n - 1 for g in got)
            asyncio.get_running_loop().call_soon(order.append, "next iteration")
            await asyncio.sleep(0)  # the batch runs at the top of the next, before that callback
            assert order == ["submitted"] * calls + ["delivered"] * calls + ["next iteration"]
            await asyncio.gather(*tasks)
        assert got == expected
        assert scheduler.batches == 5

    asyncio.run(main())


def test_one_call_is_transcoded_inline() -> None:
    async def main() -> None:
        up = stream_transcoder(TWILIO_FORMAT, VONAGE_FORMAT, batching=True)
        down = stream_transcoder(VONAGE_FORMAT, TWILIO_FORMAT, batching=True)  # another kind: no partner
        ref = Transcoder(TWILIO_FORMAT, VONAGE_FORMAT)
        got: list[bytes] = []
        frame = ulaw_frame()
        up.submit(frame, got.append)
        assert got == [ref.process(frame)]  # before submit returned
        assert up.scheduler is not None and down.scheduler is not None
        assert up.scheduler.batches == 0

    asyncio.run(main())


def test_several_frames_of_a_stream_in_one_iteration_keep_their_order_and_settle_delivers_now() -> None:
    async def main() -> None:
        a, b = (stream_transcoder(TWILIO_FORMAT, VONAGE_FORMAT, batching=True) for _ in range(2))
        ref_a, ref_b = Transcoder(TWILIO_FORMAT, VONAGE_FORMAT), Transcoder(TWILIO_FORMAT, VONAGE_FORMAT)
        got_a: list[bytes] = []
        got_b: list[bytes] = []
        frames = [ulaw_frame() for _ in range(4)]
        for frame in frames:
            a.submit(frame, got_a.append)
        b.submit(frames[0], got_b.append)
        a.submit(frames[0][:37], got_a.append)  # a partial frame, still after the others
        assert got_a == []
        a.settle()  # a control message must follow the audio before it: delivered now, in order
        assert got_a == [ref_a.process(f) for f in [*frames, frames[0][:37]]]
        assert got_b == [ref_b.process(frames[0])]
        assert a.process(frames[1]) == ref_a.process(frames[1])
        await asyncio.sleep(0)  # the scheduled run finds nothing left
        assert len(got_a) == 5 and len(got_b) == 1

    asyncio.run(main())


def test_process_and_flush_come_after_the_queued_frames() -> None:
    async def main() -> None:
        a, b = (stream_transcoder(VONAGE_FORMAT, TWILIO_FORMAT, batching=True) for _ in range(2))
        ref = Transcoder(VONAGE_FORMAT, TWILIO_FORMAT)
        pcm = (rng.standard_normal(320) * 9000).astype("<i2").tobytes()
        got: list[bytes] = []
        a.submit(pcm, got.append)
        b.submit(pcm, lambda out: None)
        first = ref.process(pcm)
        assert a.process(pcm[:101]) == ref.process(pcm[:101])
        assert got == [first]
        a.submit(pcm[101:], got.append)
        b.submit(pcm, lambda out: None)
        tail = a.flush()
        assert got == [first, ref.process(pcm[101:])] and tail == ref.flush() and len(tail) > 0

    asyncio.run(main())


def test_reset_drops_the_queued_frames_and_starts_fresh() -> None:
    async def main() -> None:
        a, b = (stream_transcoder(TWILIO_FORMAT, VONAGE_FORMAT, batching=True) for _ in range(2))
        got: list[bytes] = []
        a.submit(ulaw_frame(), got.append)
        b.submit(ulaw_frame(), lambda out: None)
        a.reset()  # barge-in: the queued frame's output would be cleared anyway
        frame = ulaw_frame()
        a.submit(frame, got.append)
        b.submit(frame, lambda out: None)
        await asyncio.sleep(0)
        assert got == [Transcoder(TWILIO_FORMAT, VONAGE_FORMAT).process(frame)]

    asyncio.run(main())


def test_a_failing_callback_costs_the_other_streams_nothing(caplog) -> None:
    async def main() -> None:
        a, b = (stream_transcoder(TWILIO_FORMAT, VONAGE_FORMAT, batching=True) for _ in range(2))
        got: list[bytes] = []

        def boom(out: bytes) -> None:
            raise RuntimeError("agent gone")

        a.submit(ulaw_frame(), boom)
        b.submit(ulaw_frame(), got.append)
        await asyncio.sleep(0)
        assert len(got) == 1 and len(got[0]) == 640

    asyncio.run(main())
    assert "callback failed" in caplog.text


def test_batching_off_and_conversions_without_resampling_are_direct() -> None:
    async def main() -> None:
        off = stream_transcoder(TWILIO_FORMAT, VONAGE_FORMAT, batching=False)
        same_rate = StreamTranscoder(TWILIO_FORMAT, AudioFormat("pcm16", 8000), BatchScheduler.for_running_loop())
        assert off.scheduler is None and same_rate.scheduler is None
        got: list[bytes] = []
        frame = ulaw_frame()
        off.submit(frame, got.append)
        same_rate.submit(frame, got.append)
        assert got == [
            Transcoder(TWILIO_FORMAT, VONAGE_FORMAT).process(frame),
            Transcoder(TWILIO_FORMAT, AudioFormat("pcm16", 8000)).process(frame),
        ]

    asyncio.run(main())


KINDS = [(TWILIO_FORMAT, VONAGE_FORMAT), (VONAGE_FORMAT, TWILIO_FORMAT), (AudioFormat("pcm16", 24000), TWILIO_FORMAT)]


@settings(max_examples=300)
@example([0, 0], [("submit", 0, 160), ("submit", 1, 160), ("reset", 0, 0), ("settle", 0, 0)], 0)
@example([0, 0], [("submit", 0, 160), ("submit", 1, 160), ("reset", 0, 0), ("submit", 0, 160), ("tick", 0, 0)], 0)
@given(
    st.lists(st.sampled_from(range(len(KINDS))), min_size=1, max_size=6),
    st.lists(
        st.tuples(
            st.sampled_from(["submit", "submit", "submit", "tick", "settle", "process", "reset"]),
            st.integers(0, 5),
            st.sampled_from([0, 1, 3, 37, 160, 320, 321, 640, 1000]),
        ),
        max_size=60,
    ),
    st.integers(0, 2**32 - 1),
)
def test_any_interleaving_of_submit_settle_process_and_reset_matches_each_stream_alone(kinds, ops, seed) -> None:
    """A model of the edge's promises: results in submission order, batches when the loop turns
    or a stream settles (or processes), a reset drops its stream's queued frames, one live stream
    of a kind is served inline; the model transcodes with one plain Transcoder per stream."""
    gen = np.random.default_rng(seed)
    handles: list = []
    sched = BatchScheduler(handles.append, min_streams=2, min_group=2, sparse_runs=0)
    streams = [StreamTranscoder(*KINDS[k], sched) for k in kinds]
    refs = [Transcoder(*KINDS[k]) for k in kinds]
    got: list[list[bytes]] = [[] for _ in streams]
    expected: list[list[bytes]] = [[] for _ in streams]
    pending: list[tuple[int, bytes]] = []  # the model's queue

    def model_flush() -> None:
        for s, data in pending:
            expected[s].append(refs[s].process(data))
        pending.clear()

    def loop_turn() -> None:
        while handles:
            handles.pop(0)()

    for op, which, size in ops:
        s = which % len(streams)
        data = gen.integers(0, 256, size, dtype=np.uint8).tobytes()
        same_kind = sum(1 for k in kinds if k == kinds[s])
        if op == "submit":
            streams[s].submit(data, got[s].append)
            if same_kind < 2 and not any(p == s for p, _ in pending):
                expected[s].append(refs[s].process(data))
            else:
                pending.append((s, data))
        elif op == "tick":
            loop_turn()
            model_flush()
        elif op == "settle":
            streams[s].settle()
            if any(p == s for p, _ in pending):
                model_flush()
        elif op == "process":
            out = streams[s].process(data)
            if any(p == s for p, _ in pending):
                model_flush()
            assert out == refs[s].process(data)
        else:
            streams[s].reset()
            pending[:] = [(p, d) for p, d in pending if p != s]
            refs[s].reset()
        assert got == expected
    loop_turn()
    model_flush()
    assert got == expected


def test_when_frames_do_not_meet_submit_backs_off_inline_then_tries_again() -> None:
    handles: list = []
    sched = BatchScheduler(handles.append, min_streams=2, min_group=2, sparse_runs=3, backoff_frames=5)
    a, b = (StreamTranscoder(TWILIO_FORMAT, VONAGE_FORMAT, sched) for _ in range(2))
    ref = Transcoder(TWILIO_FORMAT, VONAGE_FORMAT)
    got: list[bytes] = []
    expected: list[bytes] = []
    for _ in range(3):  # one frame per loop turn: nothing to batch with
        frame = ulaw_frame()
        a.submit(frame, got.append)
        assert len(handles) == 1 and got == expected
        handles.pop()()
        expected.append(ref.process(frame))
        assert got == expected
    assert sched.inline == 5
    for _ in range(5):  # backing off: inline, nothing scheduled
        frame = ulaw_frame()
        a.submit(frame, got.append)
        expected.append(ref.process(frame))
        assert got == expected and handles == []
    frame = ulaw_frame()
    a.submit(frame, got.append)  # trying again
    b.submit(frame, lambda out: None)
    assert len(handles) == 1
    handles.pop()()
    assert got == [*expected, ref.process(frame)] and sched.batches == 1
