"""A call's live audio session: provider socket <-> transcoders <-> agent link.

Caller audio is decoded, resampled and sent to the agent as it arrives; when the agent falls
behind, it queues (bounded: the oldest is dropped and counted) and a sender drains it, so
the provider socket never waits on the agent. Agent audio is re-framed into the provider's
exact frames and paced by a `PlaybackQueue` a bounded lead ahead of the playhead, so `clear`
silences the caller within that lead. Store writes (context, transcripts, events) go through
one ordered, bounded writer (`gateway.media.writes`), never inline with audio, and what it
holds when the session ends is written before the session is done (`media.ended` last).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from gateway.audio import AudioFormat, Reframer, Transcoder
from gateway.audio.scheduler import stream_transcoder
from gateway.calls import events as ev
from gateway.calls.record import CallRecord
from gateway.media.agent import AgentLink, AgentMessageError, AgentUnavailable
from gateway.media.playback import FRAME, PendingMark, PlaybackQueue
from gateway.media.provider_socket import AUDIO, BAD, DTMF, MARK, OTHER, STOP, ProviderSocket
from gateway.media.registry import INSTANCE_ID
from gateway.media.writes import FLUSH_SECONDS, SessionWriter
from gateway.metrics import AGENT_CONNECT_FAILURES, CODEC_SECONDS
from gateway.providers.base import BadRequest, check_json_tree
from gateway.store.base import Store

log = logging.getLogger("gateway.media")

CODEC_SAMPLE_EVERY = 50  # one caller frame in this many is timed for the codec metric

MAX_AGENT_MESSAGE_CHARS = 64 * 1024
AGENT_QUEUE_HOLD = 32  # push mode: agent messages waiting behind one that awaits before the link is held


class Recorder(Protocol):
    """What the session feeds a call's recording (see `gateway.media.recording.CallRecorder`)."""

    def caller(self, frame: bytes) -> None: ...
    def agent(self, frame: bytes, at: float) -> None: ...
    def cleared(self, now: float) -> None: ...
    async def finish(self) -> dict[str, Any]: ...


@dataclass
class SessionCounters:
    """What happened on the media path; written to the timeline when the session ends."""

    frames_in: int = 0
    frames_out: int = 0
    inbound_dropped: int = 0
    outbound_dropped: int = 0
    misframed: int = 0
    bad_messages: int = 0
    agent_bad_messages: int = 0
    clears: int = 0


@dataclass
class SessionOptions:
    """Knobs of one session (defaults are the product's)."""

    lead_seconds: float = 0.16
    inbound_backlog_frames: int = 50  # 1 s of caller audio waiting for a slow agent
    outbound_max_frames: int = 3000  # 60 s of agent audio waiting to play
    on_agent_failure: str = "hangup"  # or "keep"
    agent_retry_seconds: float = 2.0
    bad_message_log_every: int = 100
    write_queue_max: int = 256  # store writes waiting; past it the agent's messages wait (see gateway.media.writes)
    write_flush_seconds: float = FLUSH_SECONDS  # how long the end waits for them before it logs what is left
    transcode_batching: bool = False  # caller audio: one batch per loop iteration (gateway.audio.scheduler)


class MediaSession:
    """Runs one call's media until the provider or the agent ends it."""

    def __init__(
        self,
        *,
        record: CallRecord,
        provider: ProviderSocket,
        agent_factory: Callable[[], AgentLink],
        agent_format: AudioFormat,
        store: Store,
        options: SessionOptions | None = None,
        recorder: Recorder | None = None,
        links: Callable[[], dict[str, Any]] | None = None,
        on_hangup: Callable[[str], Awaitable[None]] | None = None,
        session_id: str | None = None,
    ) -> None:
        self.record = record
        self.session_id = session_id  # the store's `media.session`: writes of a replaced session change nothing
        self.run_id = record.workflow_run_id
        self.provider = provider
        self.agent_factory = agent_factory
        self.agent: AgentLink | None = None
        self.agent_format = agent_format
        self.store = store
        self.options = options or SessionOptions()
        self.recorder = recorder
        self.links = links or dict
        self.on_hangup = on_hangup
        self.counters = SessionCounters()
        fmt = provider.audio_format
        self.expected_frame_bytes = fmt.frame_bytes()
        self.to_agent = stream_transcoder(fmt, agent_format, self.options.transcode_batching)
        self.to_provider = Transcoder(agent_format, fmt)
        self.reframer = Reframer(fmt.frame_bytes(), fmt.silence)
        self.playback = PlaybackQueue(
            lead_seconds=self.options.lead_seconds, max_frames=self.options.outbound_max_frames
        )
        self._backlog: deque[bytes] = deque(maxlen=self.options.inbound_backlog_frames)
        self._backlog_ready = asyncio.Event()
        sources = {"media.started": "gateway", "media.ended": "gateway", "dtmf": provider.name}
        self.writes = SessionWriter(
            store,
            self.run_id,
            source=lambda kind: sources.get(kind, "agent"),
            max_queued=self.options.write_queue_max,
            session=session_id,
        )
        self._ended_queued = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pump_task: asyncio.Task[Any] | None = None
        self._mark_timers: dict[str, asyncio.TimerHandle] = {}
        self._media_started = False
        self._provider_queue: deque[tuple[str, Any]] = deque()  # push mode: items waiting behind one that awaits
        self._provider_stopped = False
        self._provider_done = asyncio.Event()
        self._agent_queue: deque[tuple[AgentLink, bytes | str | AgentUnavailable]] = deque()  # push mode, as above
        self._agent_draining = False  # a task is taking `_agent_queue`
        self._held_agent: AgentLink | None = None  # the link told to hold while the queue is long
        self._finished = False
        self._ending = asyncio.Event()
        self.end_reason = ""

    # -- lifecycle ----------------------------------------------------------------------
    def start_message(self, start_params: Mapping[str, Any]) -> dict[str, Any]:
        """The agent protocol's `start` message."""
        r = self.record
        return {
            "type": "start",
            "call": {
                "workflow_run_id": r.workflow_run_id,
                "workflow_id": r.workflow_id,
                "user_id": r.user_id,
                "provider": self.provider.name,
                "provider_call_id": r.provider_call_id,
                "stream_id": self.provider.stream_id,
                "from": r.from_number,
                "to": r.to_number,
                "direction": r.direction,
            },
            "initial_context": r.initial_context,
            "audio": {
                "encoding": self.agent_format.encoding,
                "sample_rate": self.agent_format.sample_rate,
                "frame_ms": 20,
            },
        }

    async def run(self, start_params: Mapping[str, Any]) -> None:
        """Connect the agent, then carry audio both ways until one side ends the call."""
        self.writes.start()
        try:
            self._start = self.start_message(start_params)
            connected = await self._connect_agent()
            if not connected and self.options.on_agent_failure == "hangup":
                await self._finish("agent unavailable")
                return
            self._spawn(self._backlog_loop())
            if self.provider.listen(self._provider_item):  # the lean layer: frames arrive by callback
                provider_task = self._spawn(self._provider_done.wait())
            else:
                provider_task = self._spawn(self._from_provider())
            ending_task = self._spawn(self._ending.wait())
            await asyncio.wait({provider_task, ending_task}, return_when=asyncio.FIRST_COMPLETED)
            await self._finish(self.end_reason or "provider closed")
        except asyncio.CancelledError:  # the server is stopping: what is queued is still written
            self._provider_stopped = self._finished = True  # push mode: nothing more is carried
            for task in self._tasks:
                task.cancel()
            self._write_ended(self.end_reason or "gateway stopped", {"cancelled": True})
            raise

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def clear(self) -> None:
        """Barge-in asked from outside the agent link (admin API, another instance)."""
        await self._clear()

    def end(self, reason: str) -> None:
        """Ask the session to finish (hangup, agent failure); idempotent."""
        if not self.end_reason:
            self.end_reason = reason
        self._ending.set()

    async def _finish(self, reason: str) -> None:
        self._provider_stopped = self._finished = True  # push mode: what still arrives is not carried
        current = asyncio.current_task()
        stopping = [task for task in self._tasks if task is not current]
        for task in stopping:
            task.cancel()
        if stopping:  # an agent message waiting for room in the writes is queued as its task ends
            await asyncio.wait(stopping, timeout=2)
        for handle in self._mark_timers.values():
            handle.cancel()
        if self.agent is not None:
            with contextlib.suppress(AgentUnavailable, asyncio.TimeoutError, OSError):
                await asyncio.wait_for(self.agent.send_message({"type": "stop", "reason": reason}), 1)
            await self.agent.close()
        data: dict[str, Any] = {}
        links = self.links()
        if self.recorder is not None:
            try:
                data.update(await self.recorder.finish())
            except Exception as exc:
                data["recording_error"] = f"{type(exc).__name__}: {exc}"
            if data.get("recording_error"):
                links["recording_url"] = None
        self._write_ended(reason, data, links)
        await self.writes.wait(self.options.write_flush_seconds)
        log.info(
            "media ended run=%s reason=%s in=%d out=%d dropped_in=%d misframed=%d bad=%d",
            self.run_id,
            reason,
            self.counters.frames_in,
            self.counters.frames_out,
            self.counters.inbound_dropped,
            self.counters.misframed,
            self.counters.bad_messages,
        )

    def _write_ended(self, reason: str, data: dict[str, Any], links: dict[str, Any] | None = None) -> None:
        """Queue `media.ended` (once, last) and close the writes."""
        if self._ended_queued:
            return
        self._ended_queued = True
        data = {
            "reason": reason,
            **asdict(self.counters),
            "writes_coalesced": self.writes.coalesced,
            "writes_waited": self.writes.waited,
            **data,
        }
        media = {
            "ended": True,
            **{k: v for k, v in data.items() if k != "reason"},
            **(links if links is not None else self.links()),
        }
        self.writes.put_nowait("media.ended", {"data": data, "media": media})
        self.writes.close()

    # -- agent connection ---------------------------------------------------------------
    async def _connect_agent(self) -> bool:
        agent = self.agent_factory()
        try:
            await agent.open(self._start)
        except AgentUnavailable as exc:
            self._agent_failed(str(exc))
            if self.options.on_agent_failure == "keep":
                self._spawn(self._reconnect_agent())
            return False
        self.agent = agent
        self._read_agent(agent)
        return True

    def _agent_failed(self, reason: str) -> None:
        AGENT_CONNECT_FAILURES.inc()
        log.warning("agent failed run=%s: %s (on_failure=%s)", self.run_id, reason, self.options.on_agent_failure)
        self._queue_write(
            "agent.failed", {"data": {"reason": reason}, "events": [(ev.CALL_AGENT_FAILED, {"reason": reason})]}
        )

    async def _reconnect_agent(self) -> None:
        while not self._ending.is_set():
            await asyncio.sleep(self.options.agent_retry_seconds)
            agent = self.agent_factory()
            try:
                await agent.open(self._start)
            except AgentUnavailable:
                continue
            self.agent = agent
            self._queue_write("agent.reconnected", {"data": {}})
            self._read_agent(agent)
            return

    # -- caller -> agent ----------------------------------------------------------------
    async def _from_provider(self) -> None:
        """Pull mode: read the provider socket until it stops."""
        provider = self.provider
        while True:
            kind, value = await provider.receive()
            if kind is AUDIO:
                self._caller_audio(value)
            elif await self._provider_event(kind, value):
                return

    def _provider_item(self, kind: str, value: Any) -> None:
        """Push mode: one inbound item, called by the provider socket as it arrives. Audio is
        handled here and now (transcode, agent, no task); an item that awaits (dtmf and marks
        to the agent, stop) goes to a queue drained in order by one task, and while that queue
        is not empty everything after it waits there too, so items keep their order."""
        if self._provider_stopped:
            return
        queue = self._provider_queue
        if queue:
            if kind is AUDIO and len(queue) >= self.options.inbound_backlog_frames:
                self.counters.frames_in += 1
                self.counters.inbound_dropped += 1  # the agent link is not taking messages: bounded
                return
            queue.append((kind, value))
        elif kind is AUDIO:
            self._caller_audio(value)
        elif kind is BAD or kind is OTHER:
            self._provider_note(kind, value)
        else:
            queue.append((kind, value))
            self._spawn(self._drain_provider_queue())

    async def _drain_provider_queue(self) -> None:
        queue = self._provider_queue
        while queue:
            kind, value = queue[0]
            if kind is AUDIO:
                self._caller_audio(value)
            elif await self._provider_event(kind, value):
                self._provider_stopped = True
                queue.clear()
                self._provider_done.set()
                return
            queue.popleft()

    def _caller_audio(self, value: bytes) -> None:
        counters = self.counters
        counters.frames_in += 1
        if len(value) != self.expected_frame_bytes:
            counters.misframed += 1
        if not self._media_started:
            self._media_started = True
            provider = self.provider
            self._queue_write(
                "media.started",
                {
                    "data": {"stream_id": provider.stream_id, "format": provider.audio_format.encoding},
                    "events": [(ev.CALL_STARTED, {"stream_id": provider.stream_id})],
                    "media": {
                        "started": True,
                        "stream_id": provider.stream_id,
                        "instance": INSTANCE_ID,
                        **self.links(),
                    },
                },
            )
        if self.recorder is not None:
            self.recorder.caller(value)
        if counters.frames_in % CODEC_SAMPLE_EVERY:
            self.to_agent.submit(value, self._to_agent)
        else:  # time one frame in CODEC_SAMPLE_EVERY: the metric costs nothing per frame
            started = time.perf_counter()
            pcm = self.to_agent.process(value)
            CODEC_SECONDS.labels("to_agent").observe(time.perf_counter() - started)
            self._to_agent(pcm)

    async def _provider_event(self, kind: str, value: Any) -> bool:
        """Everything but audio; True when the provider's stream has stopped."""
        self.to_agent.settle()  # what follows caller audio reaches the agent after it
        if kind is DTMF:
            await self._agent_message({"type": "dtmf", "digit": value})
            self._queue_write("dtmf", {"data": {"digit": value}})
        elif kind is MARK:
            await self._agent_message({"type": "mark", "name": value})
        elif kind is STOP:
            self.end_reason = self.end_reason or value
            return True
        else:
            self._provider_note(kind, value)
        return False

    def _provider_note(self, kind: str, value: Any) -> None:
        if kind is BAD:
            counters = self.counters
            counters.bad_messages += 1
            if counters.bad_messages % self.options.bad_message_log_every == 1:
                log.warning(
                    "bad %s media message run=%s (%d so far): %s",
                    self.provider.name,
                    self.run_id,
                    counters.bad_messages,
                    value,
                )
        elif kind is OTHER:
            log.debug("ignored %s media event %s run=%s", self.provider.name, value, self.run_id)

    def _to_agent(self, frame: bytes) -> None:
        agent = self.agent
        if agent is None:
            self.counters.inbound_dropped += 1
            return
        if self._backlog or agent.congested():
            if len(self._backlog) == self._backlog.maxlen:
                self.counters.inbound_dropped += 1  # the oldest goes
            self._backlog.append(frame)
            self._backlog_ready.set()
            return
        try:
            agent.send_audio(frame)
        except AgentUnavailable as exc:
            self._lost_agent(agent, str(exc))

    async def _backlog_loop(self) -> None:
        while True:
            await self._backlog_ready.wait()
            self._backlog_ready.clear()
            while self._backlog:
                agent = self.agent
                if agent is None:
                    self.counters.inbound_dropped += len(self._backlog)
                    self._backlog.clear()
                    break
                if agent.congested():
                    await asyncio.sleep(0.005)
                    continue
                try:
                    agent.send_audio(self._backlog.popleft())
                except AgentUnavailable as exc:
                    self._lost_agent(agent, str(exc))

    async def _agent_message(self, message: dict[str, Any]) -> None:
        agent = self.agent
        if agent is None:
            return
        try:
            await agent.send_message(message)
        except AgentUnavailable as exc:
            self._lost_agent(agent, str(exc))

    def _lost_agent(self, agent: AgentLink, reason: str) -> None:
        if self.agent is not agent or self._ending.is_set():
            return
        self.agent = None
        self._agent_failed(reason)
        self._spawn(agent.close())
        if self.options.on_agent_failure == "hangup":
            self.end("agent failed")
            self._spawn(self._hangup("agent failed"))
        else:
            self._spawn(self._reconnect_agent())

    # -- agent -> caller ----------------------------------------------------------------
    def _read_agent(self, agent: AgentLink) -> None:
        """Carry the agent's messages: pushed by callback when both ends can (the agent link
        listens, the provider socket sends without awaiting: the lean layer), else a reader task."""
        if self.provider.sends_now() and agent.listen(
            lambda message: self._agent_item(agent, message),
            lambda reason: self._agent_item(agent, AgentUnavailable(reason)),
        ):
            return
        self._spawn(self._from_agent(agent))

    def _agent_item(self, agent: AgentLink, message: bytes | str | AgentUnavailable) -> None:
        """Push mode: one message from the agent. Audio is re-framed and what is due is sent now;
        a control message (which may await) and everything after it go through one ordered
        task, as the reader task would take them."""
        if self._finished:
            return
        queue = self._agent_queue
        if not queue and isinstance(message, bytes):
            self._agent_audio(message)
            now = self._send_due_now()
            if self.playback.wait_time(now) is not None and (self._pump_task is None or self._pump_task.done()):
                self._pump_task = self._spawn(self._pump_later())
            return
        queue.append((agent, message))
        if not self._agent_draining:
            self._agent_draining = True
            self._spawn(self._drain_agent_queue())
        elif len(queue) >= AGENT_QUEUE_HOLD and self._held_agent is None:
            self._held_agent = agent  # bounded: the link stops reading, TCP pushes back on the agent
            agent.hold(True)

    async def _drain_agent_queue(self) -> None:
        """Push mode: the queued agent messages, in order, each awaited as the reader task would.
        Releasing a held link may push more onto the queue (or, once it is empty, handle audio
        at once): the loop takes them."""
        queue = self._agent_queue
        try:
            while queue and not self._finished:
                agent, message = queue[0]
                if isinstance(message, AgentUnavailable):
                    queue.clear()
                    self._lost_agent(agent, str(message))
                    return
                await self._agent_message_in(message)
                queue.popleft()
                if self._held_agent is not None and len(queue) <= AGENT_QUEUE_HOLD // 4:
                    self._release_agent()
        finally:
            self._agent_draining = False
            if self._held_agent is not None and not self._finished:
                self._release_agent()

    def _release_agent(self) -> None:
        agent, self._held_agent = self._held_agent, None
        if agent is not None:
            agent.hold(False)

    def _agent_audio(self, message: bytes) -> None:
        for frame in self.reframer.push(self.to_provider.process(message)):
            if not self.playback.push_frame(frame):
                self.counters.outbound_dropped += 1

    async def _from_agent(self, agent: AgentLink) -> None:
        while True:
            try:
                message = await agent.receive()
            except AgentUnavailable as exc:
                self._lost_agent(agent, str(exc))
                return
            except AgentMessageError as exc:  # a protocol the link translates refused it
                self._agent_bad(str(exc))
                continue
            await self._agent_message_in(message)

    async def _agent_message_in(self, message: bytes | str) -> None:
        """One message from the agent, in its turn: audio re-framed and paced, or a control message."""
        if isinstance(message, bytes):
            self._agent_audio(message)
            await self._pump()
        else:
            await self._control(message)

    async def _pump(self) -> None:
        """Send what the playback lead allows now; a pumper task sends the rest on time."""
        now = await self._send_due()
        if self.playback.wait_time(now) is not None and (self._pump_task is None or self._pump_task.done()):
            self._pump_task = self._spawn(self._pump_later())

    async def _pump_later(self) -> None:
        while (wait := self.playback.wait_time(time.monotonic())) is not None:
            await asyncio.sleep(max(wait, 0.005))
            await self._send_due()

    async def _send_due(self) -> float:
        """Send the frames and marks that are due; returns the time it went by."""
        now = time.monotonic()
        provider = self.provider
        for is_frame, value in self._take_due(now):
            if is_frame:
                await provider.send_frame(value)
            else:
                await provider.send_mark(value)
        return now

    def _send_due_now(self) -> float:
        """`_send_due` for a provider socket that sends without awaiting (`sends_now`)."""
        now = time.monotonic()
        provider = self.provider
        for is_frame, value in self._take_due(now):
            if is_frame:
                provider.frame_now(value)
            else:
                provider.mark_now(value)
        return now

    def _take_due(self, now: float) -> list[tuple[bool, Any]]:
        """The frames and marks due at `now`, to send in this order: (True, frame) or (False,
        mark name). Their bookkeeping is done here (frames out, the recording, a mark the
        provider does not echo timed by the playhead)."""
        due: list[tuple[bool, Any]] = []
        plays_at = max(self.playback.played_until, now)  # where the first released frame starts
        for kind, value in self.playback.take_due(now):
            if kind == FRAME:
                assert isinstance(value, bytes)
                due.append((True, value))
                self.counters.frames_out += 1
                if self.recorder is not None:
                    self.recorder.agent(value, plays_at)
                plays_at += self.playback.frame_seconds
            elif not isinstance(value, PendingMark):
                continue
            elif self.provider.echoes_marks:
                due.append((False, value.name))
            else:
                self._time_mark(value.name, value.plays_at - now)
        return due

    def _time_mark(self, name: str, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def played() -> None:
            self._mark_timers.pop(name, None)
            self._spawn(self._agent_message({"type": "mark", "name": name}))

        self._mark_timers[name] = loop.call_later(max(delay, 0.0), played)

    async def _clear(self) -> None:
        now = time.monotonic()
        self.counters.clears += 1
        dropped = self.playback.clear(now)
        if self.recorder is not None:
            self.recorder.cleared(now)
        self.reframer.clear()
        self.to_provider.reset()
        await self.provider.send_clear()
        for name, handle in list(self._mark_timers.items()):
            handle.cancel()
            dropped.append(name)
        self._mark_timers.clear()
        for name in dropped:
            await self._agent_message({"type": "mark", "name": name, "cleared": True})

    async def _hangup(self, reason: str) -> None:
        if self.on_hangup is not None:
            await self.on_hangup(reason)

    async def _control(self, text: str) -> None:
        if len(text) > MAX_AGENT_MESSAGE_CHARS:
            self._agent_bad(f"message of {len(text)} characters is over the limit")
            return
        try:
            message = json.loads(text)
            check_json_tree(message, limit=MAX_AGENT_MESSAGE_CHARS)  # a lone surrogate: the store cannot write it
        except BadRequest as exc:
            self._agent_bad(str(exc))
            return
        except (ValueError, RecursionError):
            self._agent_bad("message is not valid JSON")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._agent_bad("message is not an object with a type")
            return
        kind = message["type"]
        if kind == "clear":
            await self._clear()
        elif kind == "mark":
            name = message.get("name")
            if isinstance(name, str) and name:
                # The mark follows all audio sent before it: the partial frame goes out padded.
                for frame in self.reframer.flush():
                    self.playback.push_frame(frame)
                self.playback.push_mark(name[:256])
                await self._pump()
            else:
                self._agent_bad("mark needs a name")
        elif kind == "hangup":
            reason = str(message.get("reason") or "agent hung up")[:200]
            await self.writes.put("agent.hangup", {"data": {"reason": reason}})
            self.end("agent hangup")
            await self._hangup(reason)
        elif kind == "context":
            data = message.get("data")
            if isinstance(data, dict):
                await self.writes.put("agent.context", {"data": {"keys": sorted(data)[:50]}, "gathered_context": data})
            else:
                self._agent_bad("context.data must be an object")
        elif kind == "transcript":
            role, text_value, final = message.get("role"), message.get("text"), message.get("final", True)
            if not isinstance(role, str) or not isinstance(text_value, str):
                self._agent_bad("transcript needs role and text strings")
            elif final:
                line = {"role": role[:32], "text": text_value[:8000], "final": True, "at": time.time()}
                await self.writes.put("transcript", {"data": line, "events": [(ev.CONVERSATION_TRANSCRIPT, line)]})
        elif kind == "intent":
            name = message.get("name")
            if isinstance(name, str):
                detail = {"name": name[:200], "confidence": message.get("confidence"), "data": message.get("data")}
                await self.writes.put("intent", {"data": detail, "events": [(ev.CONVERSATION_INTENT_DETECTED, detail)]})
            else:
                self._agent_bad("intent needs a name")
        elif kind == "entity":
            name = message.get("name")
            if isinstance(name, str) and name:
                detail = {"name": name[:200], "value": message.get("value")}
                await self.writes.put(
                    "entity",
                    {
                        "data": detail,
                        "events": [(ev.CONVERSATION_ENTITY_CAPTURED, detail)],
                        "gathered_context": {name[:200]: message.get("value")},
                    },
                )
            else:
                self._agent_bad("entity needs a name")
        elif kind == "annotations":
            data = message.get("data")
            if isinstance(data, dict):
                await self.writes.put("agent.annotations", {"data": {"keys": sorted(data)[:50]}, "annotations": data})
            else:
                self._agent_bad("annotations.data must be an object")
        else:
            log.info("ignored agent message type %r run=%s", kind[:40], self.run_id)

    def _agent_bad(self, reason: str) -> None:
        self.counters.agent_bad_messages += 1
        log.warning("bad agent message run=%s: %s", self.run_id, reason)

    # -- store writes (gateway.media.writes) ----------------------------------------------
    def _queue_write(self, kind: str, payload: dict[str, Any]) -> None:
        """A write of the session's own (never waits; see `SessionWriter.put_nowait`)."""
        self.writes.put_nowait(kind, payload)
