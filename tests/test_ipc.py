"""gateway.ipc: frame splitting (pure), `FrameChannel` over a real socket pair on the test's
event loop, and `ChildProcess` with real spawned children (their targets are in ipc_children.py,
which a spawned interpreter can import by name from any working directory)."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import time

import pytest

from ipc_children import echo_child, last_words_child, moody_child
from support import eventually

from gateway.ipc import ChildProcess, FrameChannel, FrameReader, frame


class Lost(Exception):
    pass


class FastChild(ChildProcess):
    RESTART_MIN = 0.05  # read in __init__: lowering it on an instance afterwards is too late


def raw(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


# -- FrameReader / frame ---------------------------------------------------------------------

def test_frame_fed_byte_by_byte_completes_only_at_its_last_byte():
    data, reader = raw(b"hello world"), FrameReader()
    for byte in data[:-1]:
        assert reader.feed(bytes([byte])) == []
    assert reader.feed(data[-1:]) == [b"hello world"]
    assert reader.feed(b"") == []


def test_several_frames_in_one_chunk_and_a_split_one_across_calls():
    reader = FrameReader()
    assert reader.feed(b"") == []
    chunk = raw(b"a") + raw(b"") + raw(b"ccc") + raw(b"dddd")[:6]
    assert reader.feed(chunk) == [b"a", b"", b"ccc"]
    assert reader.feed(b"d") == []
    assert reader.feed(b"d" + raw(b"e")[:2]) == [b"dddd"]  # state kept: tail of one, head of next
    assert reader.feed(raw(b"e")[2:]) == [b"e"]


def test_header_announcing_more_than_arrives_keeps_waiting():
    reader, header = FrameReader(), struct.pack("<I", 1 << 24)
    assert reader.feed(header[:2]) == []  # not even a whole header
    assert reader.feed(header[2:] + b"x" * 1000) == []  # 1000 bytes of the announced 16 MiB
    assert reader.feed(b"y" * 100) == []
    assert reader.feed(b"z" * ((1 << 24) - 1101)) == []  # one byte short
    assert reader.feed(b"!" + raw(b"next")) == [b"x" * 1000 + b"y" * 100 + b"z" * ((1 << 24) - 1101) + b"!", b"next"]
    huge = FrameReader()
    assert huge.feed(b"\xff\xff\xff\xff" + b"z" * 4096) == []  # 4 GiB announced: no exception


def test_frame_round_trip_through_the_reader():
    batches = [[(1, "a"), (2, b"\x00\xff")], [{"nested": {"k": [1, 2.5, None]}, "ünïcødé": "☎ 📞"}], [], [b"x" * 70000]]
    data = b"".join(frame(items) for items in batches)
    reader = FrameReader()
    got = [pickle.loads(payload) for i in range(0, len(data), 4093) for payload in reader.feed(data[i:i + 4093])]
    assert got == batches


# -- FrameChannel ----------------------------------------------------------------------------

class Side:
    """A `FrameChannel` on one socket, recording the lists it receives and its on_closed calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.got, self.closed = sock, [], 0
        self.channel = FrameChannel(asyncio.get_running_loop(), sock.fileno(), self.got.append, self._on_closed)

    def _on_closed(self) -> None:
        self.closed += 1

    def items(self) -> list:
        return [item for items in self.got for item in items]


@pytest.fixture
async def make_pair():
    """`make_pair()` -> two `Side`s on a fresh socket pair; the loop must report no error."""
    loop = asyncio.get_running_loop()
    errors: list = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    sides: list[Side] = []

    def make() -> tuple[Side, Side]:
        pair = [Side(sock) for sock in socket.socketpair()]
        sides.extend(pair)
        return pair[0], pair[1]

    yield make
    for side in sides:
        side.channel.close()
    for side in sides:
        side.sock.close()
    assert errors == []


async def test_items_sent_in_one_turn_arrive_as_one_list_in_order(make_pair):
    a, b = make_pair()
    for item in [(0, "x"), (1, b"y"), (2, {"z": 1})]:
        a.channel.send(item)
    await eventually(lambda: b.got, what="a frame")
    await asyncio.sleep(0.05)
    assert b.got == [[(0, "x"), (1, b"y"), (2, {"z": 1})]]
    for n in range(20):
        a.channel.send(n)
        b.channel.send(-n)
        await asyncio.sleep(0)
    await eventually(lambda: len(b.items()) == 23 and len(a.items()) == 20, what="all items")
    assert b.items()[3:] == list(range(20)) and a.items() == [-n for n in range(20)]


async def test_an_item_that_cannot_be_pickled_is_replaced_and_the_others_of_its_turn_still_go(make_pair):
    """A delivery process's result nested too deep to pickle must not take the turn's other
    results down with it, nor leave its own caller waiting: it goes back as what `unsendable` says."""
    a, b = make_pair()
    a.channel.unsendable = lambda item, error: (item[0], f"unsendable: {type(error).__name__}")
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    a.channel.send((0, "before"))
    a.channel.send((1, deep))
    a.channel.send((2, lambda: None))
    a.channel.send((3, "after"))
    await eventually(lambda: len(b.items()) == 4, what="every item or its replacement")
    assert b.items() == [(0, "before"), (1, "unsendable: RecursionError"), (2, "unsendable: AttributeError"), (3, "after")]


async def test_a_frame_larger_than_the_socket_buffer_is_written_in_parts(make_pair):
    a, b = make_pair()
    big = os.urandom(6 << 20)
    a.channel.send(big)
    a.channel.send("after")
    await asyncio.sleep(0)  # the flush ran; what the socket buffer could not take waits for add_writer
    assert a.channel._unsent
    a.channel.send("next turn")  # appended behind the unsent part
    await eventually(lambda: len(b.got) == 2, what="both frames")
    assert b.got[0] == [big, "after"] and b.got[1] == ["next turn"]
    assert not a.channel._unsent and a.closed == b.closed == 0


async def test_peer_closing_calls_on_closed_once_then_send_does_nothing(make_pair):
    a, b = make_pair()
    b.channel.close()
    b.sock.close()
    await eventually(lambda: a.closed, what="on_closed")
    a.channel.send("ignored")
    await asyncio.sleep(0.05)
    assert a.closed == 1 and a.channel.closed and a.got == [] and not a.channel._queued


async def test_a_write_error_calls_on_closed_once(make_pair):
    a, b = make_pair()
    b.channel.close()
    b.sock.close()
    a.channel.send("into a closed pipe")  # flushed before the loop polls and sees end-of-file
    await eventually(lambda: a.closed, what="on_closed")
    await asyncio.sleep(0.05)
    assert a.closed == 1 and a.channel._unsent  # the write failed (EPIPE); nothing was queued after


async def test_close_neither_calls_on_closed_nor_delivers(make_pair):
    a, b = make_pair()
    a.channel.close()
    b.channel.send("late")
    await asyncio.sleep(0.05)
    b.channel.close()
    b.sock.close()
    a.channel.send("ignored")
    await asyncio.sleep(0.05)
    assert a.closed == 0 and a.got == [] and b.closed == 0


# -- ChildProcess ----------------------------------------------------------------------------

@pytest.fixture
async def children():
    started: list[ChildProcess] = []

    def start(target, **kw) -> ChildProcess:
        child = FastChild("test child", target, (), lost=Lost, **kw)
        child.start()
        started.append(child)
        return child

    yield start
    for child in started:
        await child.stop(grace=2)


async def test_many_concurrent_requests_get_their_own_answers(children):
    child = children(echo_child)
    futures = [child.request(("n", n)) for n in range(300)]
    for n in range(300, 320):
        futures.append(child.request(("n", n)))
        await asyncio.sleep(0)
    answers = await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert answers == [("echo", ("n", n)) for n in range(320)]
    assert child.waiting == 0 and child.up


async def test_a_child_that_dies_fails_its_requests_and_is_restarted(children, caplog):
    caplog.set_level(logging.INFO, logger="gateway")
    child = children(moody_child)
    assert await asyncio.wait_for(child.request("hi"), 10) == ("echo", "hi")
    first, first_pid = child.process, child.pid
    doomed = [child.request("die"), child.request("other")]
    for future in doomed:
        with pytest.raises(Lost):
            await asyncio.wait_for(future, 10)
    await eventually(lambda: child.process is not first and child.up and child.pid, what="restart")
    assert first.exitcode == 3 and child.pid != first_pid
    assert await asyncio.wait_for(child.request("again"), 10) == ("echo", "again")
    assert any("exited with code 3" in r.getMessage() and "starting it again" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
    assert any("started again: pid" in r.getMessage() for r in caplog.records)


async def test_stop_closes_the_pipe_and_the_child_exits_cleanly_without_restart(children):
    child = children(echo_child)
    assert await asyncio.wait_for(child.request(1), 10) == ("echo", 1)
    process = child.process
    began = time.monotonic()
    await child.stop(grace=5)
    assert time.monotonic() - began < 4  # it ended on end-of-file, not at the deadline
    assert process.exitcode == 0 and child.pid is None and not child.up
    await asyncio.sleep(FastChild.RESTART_MIN * 4)
    assert child.process is process and child.pid is None


async def test_stop_kills_a_child_that_does_not_end_and_fails_waiting_requests(children, caplog):
    child = children(moody_child)
    assert await asyncio.wait_for(child.request(1), 10) == ("echo", 1)
    hanging = child.request("hang")
    await asyncio.sleep(0.1)
    await child.stop(grace=0.3)
    with pytest.raises(Lost, match="stopped"):
        await hanging
    assert child.process.exitcode == -signal.SIGKILL and child.pid is None
    assert any("did not stop" in r.getMessage() for r in caplog.records)


async def test_answers_a_child_wrote_before_it_ended_are_delivered(children):
    for _ in range(5):  # the exit may be seen before or after the answer is read: both must deliver it
        child = children(last_words_child)
        answers = [child.request(n) for n in range(50)]
        assert await asyncio.wait_for(asyncio.gather(*answers), 10) == [("last", n) for n in range(50)]
        await child.stop()
