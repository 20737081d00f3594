"""Playback pacing: the lead bound, marks in order, clear, idle restarts. Pure."""

from __future__ import annotations

from gateway.media.playback import FRAME, MARK, PlaybackQueue


def frames(n):
    return [bytes([i % 256]) * 160 for i in range(n)]


def test_burst_is_released_only_up_to_the_lead():
    q = PlaybackQueue(frame_seconds=0.02, lead_seconds=0.16)
    for f in frames(100):
        q.push_frame(f)
    first = q.take_due(10.0)
    assert len(first) == 8  # 160 ms ahead of the playhead
    assert q.take_due(10.0) == []
    assert abs(q.wait_time(10.0) - 0.02) < 1e-9
    # 20 ms later one more frame fits.
    assert len(q.take_due(10.02)) == 1
    # 100 ms later five more have played, so five more go.
    assert len(q.take_due(10.12)) == 5
    # Left alone for a second the provider ran dry: the lead restarts from now.
    assert len(q.take_due(11.12)) == 8


def test_real_time_stream_goes_straight_through():
    q = PlaybackQueue()
    sent = 0
    for i in range(500):
        q.push_frame(b"\xff" * 160)
        sent += len(q.take_due(100.0 + i * 0.02))
        assert q.wait_time(100.0 + i * 0.02) is None
    assert sent == 500


def test_marks_keep_their_place_and_carry_their_play_time():
    q = PlaybackQueue(lead_seconds=0.1)
    for f in frames(3):
        q.push_frame(f)
    q.push_mark("after-3")
    q.push_frame(b"x" * 160)
    out = q.take_due(0.0)
    kinds = [k for k, _ in out]
    assert kinds == [FRAME, FRAME, FRAME, MARK, FRAME]
    mark = out[3][1]
    assert mark.name == "after-3" and abs(mark.plays_at - 0.06) < 1e-9


def test_clear_drops_everything_and_returns_unsent_marks():
    q = PlaybackQueue(lead_seconds=0.04)
    for f in frames(10):
        q.push_frame(f)
    q.push_mark("m1")
    q.take_due(0.0)
    assert len(q) == 8
    assert q.clear(0.01) == ["m1"]
    assert len(q) == 0 and q.wait_time(0.01) is None
    q.push_frame(b"y" * 160)
    assert [k for k, _ in q.take_due(0.011)] == [FRAME]  # plays at once after a clear


def test_queue_is_bounded_and_counts_refusals():
    q = PlaybackQueue(max_frames=5)
    results = [q.push_frame(f) for f in frames(8)]
    assert results == [True] * 5 + [False] * 3 and q.dropped == 3


def test_idle_gap_restarts_the_playhead():
    q = PlaybackQueue(lead_seconds=0.04)
    q.push_frame(b"a" * 160)
    q.take_due(0.0)
    for f in frames(5):
        q.push_frame(f)
    assert len(q.take_due(5.0)) == 2  # long idle: a fresh 40 ms lead from now
