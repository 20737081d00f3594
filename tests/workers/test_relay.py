"""The control relay: its line framing (pure), and a real relay server with two clients on a Unix socket."""

from __future__ import annotations

import socket

from gateway.workers.relay import MAX_LINE, Control, LineDecoder, RelayClient, RelayServer, decode, encode
from support import eventually


def test_a_message_round_trips_through_one_line():
    control = Control("run-1", "hangup", {"reason": "line\nbreak \u00e9", "n": 1})
    line = encode(control)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # JSON escapes the newline inside the reason
    assert LineDecoder().feed(line) == [line[:-1]]
    assert decode(line[:-1]) == control


def test_lines_split_and_joined_anyhow_come_out_whole_and_in_order():
    lines = b"".join(encode(Control(f"run-{i}", "clear")) for i in range(5))
    decoder = LineDecoder()
    out = []
    for i in range(0, len(lines), 7):  # arbitrary chunks across line boundaries
        out += decoder.feed(lines[i : i + 7])
    assert [decode(line).run_id for line in out] == [f"run-{i}" for i in range(5)]


def test_an_oversized_line_is_dropped_alone():
    decoder = LineDecoder(max_line=100)
    big = b'{"run_id":"' + b"x" * 500 + b'","action":"clear"}\n'
    out = decoder.feed(big[:300]) + decoder.feed(big[300:] + encode(Control("after", "clear")))
    assert [decode(line) for line in out] == [Control("after", "clear")]
    assert decoder.dropped == 1
    decoder = LineDecoder(max_line=100)  # the same, arriving as one piece
    assert [decode(x) for x in decoder.feed(big + encode(Control("next", "clear")))] == [Control("next", "clear")]
    assert decoder.dropped == 1
    assert MAX_LINE >= 4096


def test_what_is_not_a_message_decodes_to_none():
    for line in [
        b"",
        b"nope",
        b"[]",
        b'{"run_id": 1, "action": "clear"}',
        b'{"run_id": "r"}',
        b'{"run_id": "r", "action": "clear", "data": []}',
        b"\xff\xfe",
    ]:
        assert decode(line) is None
    assert decode(b'{"run_id": "r", "action": "clear"}') == Control("r", "clear", {})


async def test_the_relay_brings_every_message_to_every_worker_the_sender_included(tmp_path):
    path = str(tmp_path / "control.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    server = RelayServer(listener)
    await server.start()
    got: dict[str, list[Control]] = {"a": [], "b": []}
    a = RelayClient(path, got["a"].append)
    b = RelayClient(path, got["b"].append)
    await a.start()
    await b.start()
    await eventually(lambda: len(server._clients) == 2, what="both connected")
    await a.publish(Control("run-1", "clear"))
    await b.publish(Control("run-2", "hangup", {"reason": "call ended"}))
    await eventually(lambda: len(got["a"]) == 2 and len(got["b"]) == 2, what="both delivered")
    assert sorted(c.run_id for c in got["a"]) == sorted(c.run_id for c in got["b"]) == ["run-1", "run-2"]
    # A client that sends garbage is not passed on; the others are unaffected.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(path)
    raw.sendall(b"garbage\n" + encode(Control("run-3", "clear")))
    await eventually(lambda: len(got["a"]) == 3, what="the valid line relayed")
    assert got["a"][-1] == Control("run-3", "clear")
    raw.close()
    await a.stop()
    await b.stop()
    await server.stop()
    listener.close()


async def test_without_the_relay_a_request_is_handled_here(tmp_path):
    got: list[Control] = []
    client = RelayClient(str(tmp_path / "absent.sock"), got.append)
    await client.start(timeout=0.2)
    await client.publish(Control("run-1", "clear"))
    assert got == [Control("run-1", "clear")]
    await client.stop()
