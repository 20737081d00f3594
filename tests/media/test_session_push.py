"""A media session whose provider socket pushes its messages (the lean layer's `PushWire`), on a
real store: what the session does with messages that arrive after the server has stopped it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging

from gateway.audio import AudioFormat
from gateway.calls import CallState, CallUpdate
from gateway.media.agent import EchoAgentLink
from gateway.media.provider_socket import TwilioSocket
from gateway.media.session import MediaSession
from gateway.media.writes import flush_all
from postgres_support import open_store
from support import eventually

RUN = "run-push"
SID = "MZ" + "2" * 32


class MemoryWire:
    """The `PushWire` the lean layer gives a provider socket, in memory: the test delivers the
    messages (as picows's callbacks would), and what the session sends is kept."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.on_message = None
        self.on_close = None

    def listen(self, on_message, on_close) -> None:
        self.on_message, self.on_close = on_message, on_close

    def send_text(self, text) -> bool:
        self.sent.append(text)
        return True

    send_text_bytes = send_bytes = send_text


def media(n: int) -> str:
    payload = base64.b64encode(b"\xff" * 160).decode()
    return json.dumps({"event": "media", "streamSid": SID, "sequenceNumber": str(n),
                       "media": {"track": "inbound", "chunk": str(n), "timestamp": str(n * 20), "payload": payload}})


async def test_a_session_the_servers_stop_cancelled_takes_no_more_pushed_messages(tmp_path, caplog):
    async with open_store("sqlite", str(tmp_path / "gateway.db")) as store:
        await store.apply_update(CallUpdate(provider="twilio", provider_call_id="CA1", state=CallState.ANSWERED), run_id=RUN)

        async def unused(*args):
            raise AssertionError("a pushed socket is not read or written through ASGI")

        wire = MemoryWire()
        provider = TwilioSocket(unused, unused, wire=wire)
        provider.stream_id = SID
        session = MediaSession(record=await store.get_call(RUN), provider=provider, agent_factory=EchoAgentLink,
                               agent_format=AudioFormat("pcm16", 16000), store=store)
        running = asyncio.ensure_future(session.run({}))
        await eventually(lambda: wire.on_message is not None, what="the session listening")
        wire.on_message(media(1), None)
        await eventually(lambda: wire.sent, what="the echo")
        running.cancel()  # the server is stopping
        with contextlib.suppress(asyncio.CancelledError):
            await running
        with caplog.at_level(logging.WARNING, logger="gateway.media"):
            wire.on_message(json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "5"}}), None)
            wire.on_message(media(2), None)
            await asyncio.sleep(0.1)
        assert "queued after the session's writes were closed" not in caplog.text
        await flush_all(10)
        timeline = await store.get_timeline(RUN)
        kinds = [t.kind for t in timeline]
        assert "dtmf" not in kinds and kinds[-1] == "media.ended"
        ended = timeline[-1].data
        assert ended["cancelled"] is True and ended["frames_in"] == 1
