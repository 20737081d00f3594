"""Call recording and transcript: the pure timeline and link signing, and end to end through a
real gateway server with real WebSocket clients and agent servers."""

from __future__ import annotations

import asyncio
import audioop
import base64
import contextlib
import io
import json
import logging
import os
import shutil
import time
import wave
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
import soxr
import websockets

from gateway.audio import TWILIO_FORMAT, VONAGE_FORMAT
from gateway.api.recordings import with_fresh_links
from gateway.calls.record import channel_link
from gateway.media import signed_url
from gateway.media.recording import (
    RecordingTimeline, StereoConverter, WavFile, publish_recording, recover_recordings, recording_enabled,
)
from support import TWILIO_SID, eventually, twilio_signature
from media.test_bridge import RUN, WEBHOOK, AgentServer, TwilioClient, admin_call, speech_like, vonage_jwt  # noqa: F401

KEY = b"test-secret-key"  # base_config's secret_key


# -- pure ------------------------------------------------------------------------------------


def test_recording_setting_is_global_or_per_workflow():
    assert recording_enabled(True, "wf") and recording_enabled(True, None)
    assert not recording_enabled(False, "wf")
    assert recording_enabled(["wf", "other"], "wf")
    assert not recording_enabled(["other"], "wf") and not recording_enabled(["wf"], None)


def test_timeline_places_agent_audio_at_its_playout_time():
    t = RecordingTimeline(TWILIO_FORMAT, start=100.0, settle_seconds=0.1)
    for i in range(50):  # 1 s of caller audio, in real time
        t.caller(bytes([i]) * 160, 100.0 + (i + 1) * 0.02)
    t.agent(b"\x01" * 160, 100.5)  # plays from 0.5 s
    t.agent(b"\x02" * 160, 100.52)
    caller, agent = t.take_all()
    assert len(caller) == len(agent) == 8000
    assert caller[:160] == b"\x00" * 160 and caller[-160:] == bytes([49]) * 160
    assert agent[:4000] == b"\xff" * 4000  # mu-law silence until 0.5 s
    assert agent[4000:4160] == b"\x01" * 160 and agent[4160:4320] == b"\x02" * 160
    assert agent[4320:] == b"\xff" * (8000 - 4320)


def test_timeline_clear_cuts_unplayed_agent_audio_and_new_audio_replaces_it():
    t = RecordingTimeline(TWILIO_FORMAT, start=0.0)
    for i in range(8):  # 160 ms sent ahead of the playhead
        t.agent(b"\x05" * 160, 1.0 + i * 0.02)
    t.cleared(1.05)  # barge-in 50 ms in: the rest never plays
    t.agent(b"\x07" * 160, 1.10)  # new speech 50 ms after the clear
    _, agent = t.take_all()
    start = 8000
    assert agent[start:start + 400] == b"\x05" * 400
    assert agent[start + 400:start + 800] == b"\xff" * 400
    assert agent[start + 800:] == b"\x07" * 160


def test_timeline_take_hands_over_settled_audio_only_and_waits_for_a_late_caller():
    t = RecordingTimeline(VONAGE_FORMAT, start=0.0, settle_seconds=0.4)
    assert t.take(0.3) is None
    for i in range(50):
        t.caller(b"\x01\x00" * 320, (i + 1) * 0.02)
    caller, agent = t.take(1.0)  # 0.6 s settled
    assert len(caller) == len(agent) == 9600 * 2
    t.caller(b"\x01\x00" * 320, 1.02)
    caller, _ = t.take(1.6)  # the caller is behind real time: only what it sent goes
    assert len(caller) == (16000 - 9600 + 320) * 2


def test_timeline_pause_in_the_caller_stream_becomes_silence():
    t = RecordingTimeline(TWILIO_FORMAT, start=0.0)
    t.caller(b"\x01" * 160, 0.02)
    t.caller(b"\x02" * 160, 3.02)  # nothing for 3 s
    caller, _ = t.take_all()
    assert len(caller) == 3 * 8000 + 160
    assert caller[160:3 * 8000] == b"\xff" * (3 * 8000 - 160) and caller[-160:] == b"\x02" * 160


def test_both_channels_are_converted_and_written_as_a_published_stereo_wav(tmp_path):
    path = tmp_path / "rec" / "r.wav"
    converter, f = StereoConverter(TWILIO_FORMAT), WavFile(path)
    tone = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 8000).astype(np.int16)
    mulaw = audioop.lin2ulaw(tone.tobytes(), 2)
    for i in range(0, 8000, 1600):  # stretches of 200 ms, as the recorder converts them
        f.append(converter.convert(mulaw[i:i + 1600], b"\xff" * 1600))
    assert f.partial.exists() and not path.exists()
    frames = f.finish(converter.finish())
    assert path.exists() and not f.partial.exists()
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (2, 2, 16000, frames)
        data = np.frombuffer(wav.readframes(frames), dtype="<i2").reshape(-1, 2)
    assert frames >= 16000
    assert np.abs(data[:, 1]).max() == 0 and np.abs(data[2000:14000, 0]).max() > 6000
    chunked = np.frombuffer(b"".join([StereoConverter(TWILIO_FORMAT).convert(mulaw, b"\xff" * 8000)]), dtype="<i2")
    assert np.array_equal(chunked.reshape(-1, 2)[:, 0], data[:chunked.size // 2, 0])  # stretches join seamlessly


def stereo(value: int, frames: int) -> bytes:
    return np.full((frames, 2), value, dtype="<i2").tobytes()


def wav_samples(path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 16000)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)


def test_a_second_session_of_a_call_is_appended_to_its_recording_not_written_over(tmp_path):
    path = tmp_path / "rec" / "r.wav"
    first, second = WavFile(path), WavFile(path)  # a stream restarted while the first was still open
    assert first.partial != second.partial
    first.append(stereo(1, 1600))
    second.append(stereo(2, 800))
    assert first.finish(stereo(1, 400)) == 2000
    assert len(wav_samples(path)) == 2000
    assert second.finish(b"") == 800  # this session's frames
    samples = wav_samples(path)
    assert len(samples) == 2800 and (samples[:2000] == 1).all() and (samples[2000:] == 2).all()
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.wav"]  # no part or merge file left
    third = WavFile(path)
    assert third.finish(b"") == 0 and len(wav_samples(path)) == 2800  # an empty session adds nothing


def crashed_part(tmp_path, run: str, frames: list[bytes], torn: bytes = b"") -> Path:
    """The part file a recorder leaves when its process dies: flushed appends, no final header."""
    live = WavFile(tmp_path / "live" / f"{run}.wav")
    for chunk in frames:
        live.append(chunk)
    part = tmp_path / "recordings" / f"{run}.wav.0123456789ab.part"
    part.parent.mkdir(exist_ok=True)
    shutil.copyfile(live.partial, part)  # what is on disk while the writer is still open
    live.abort()
    with open(part, "ab") as f:
        f.write(torn)
    old = time.time() - 120
    os.utime(part, (old, old))
    return part


def test_a_recording_whose_process_died_is_repaired_and_published(tmp_path, caplog):
    part = crashed_part(tmp_path, "run-x", [stereo(3, 3200), stereo(4, 3200)], torn=b"\x01\x02\x03")
    with wave.open(str(part)) as wav:
        assert wav.getnframes() == 3200  # the header only knows the first write
    with caplog.at_level(logging.WARNING, logger="gateway.media"):
        recovered = recover_recordings(tmp_path / "recordings")
    path = tmp_path / "recordings" / "run-x.wav"
    assert recovered == [path] and not part.exists()
    samples = wav_samples(path)
    assert len(samples) == 6400 and (samples[:3200] == 3).all() and (samples[3200:] == 4).all()  # the torn frame is cut
    assert "recovered 0.4 s" in caplog.text and "run-x.wav" in caplog.text


def test_a_recovered_session_is_appended_to_the_calls_finished_recording(tmp_path):
    path = tmp_path / "recordings" / "run-y.wav"
    earlier = WavFile(path)
    earlier.finish(stereo(5, 1000))
    crashed_part(tmp_path, "run-y", [stereo(6, 500)])
    assert recover_recordings(tmp_path / "recordings") == [path]
    samples = wav_samples(path)
    assert len(samples) == 1500 and (samples[:1000] == 5).all() and (samples[1000:] == 6).all()


def test_recovery_leaves_live_and_foreign_files_alone(tmp_path, caplog):
    folder = tmp_path / "recordings"
    live = WavFile(folder / "run-live.wav")
    live.append(stereo(7, 100))  # written to just now: its writer is alive
    garbage = folder / "run-g.wav.0123456789ab.part"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(100))
    truncated = folder / "run-t.wav.0123456789ab.part"
    truncated.write_bytes(b"RIFF\x24\x00")
    other_rate = folder / "run-r.wav.0123456789ab.part"
    with wave.open(str(other_rate), "wb") as wav:
        wav.setnchannels(2), wav.setsampwidth(2), wav.setframerate(8000)
        wav.writeframes(stereo(1, 10))
    old = time.time() - 120
    for stale in (garbage, truncated, other_rate):
        os.utime(stale, (old, old))
    with caplog.at_level(logging.ERROR, logger="gateway.media"):
        assert recover_recordings(folder) == []
        # Ours and open, though the disk kept it waiting longer than another writer's would be.
        os.utime(live.partial, (old, old))
        assert recover_recordings(folder) == []
    assert live.partial.exists()
    for foreign in (garbage, truncated, other_rate):  # set aside whole, and said once
        aside = foreign.with_name(foreign.name + ".unrecoverable")
        assert not foreign.exists() and aside.exists() and f"kept as {aside.name}" in caplog.text
    assert caplog.text.count("could not recover the recording") == 3
    assert recover_recordings(tmp_path / "absent") == []  # no recordings folder yet: nothing to do
    live.finish(b"")
    assert len(wav_samples(folder / "run-live.wav")) == 100


def test_publishing_refuses_a_file_of_another_format_and_keeps_both(tmp_path):
    path = tmp_path / "r.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(16000)
        wav.writeframes(b"\x00\x00" * 10)
    session = WavFile(path)
    session.append(stereo(1, 10))
    session._close()
    with pytest.raises(ValueError, match="16 kHz stereo"):
        publish_recording(session.partial, path)
    assert session.partial.exists() and path.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".merge")] == []


def test_signed_links_check_kind_run_and_expiry():
    query = parse_qs(signed_url.signed_query(KEY, "recording", "run-1", now=1000, ttl=60))
    expires, signature = query["expires"][0], query["signature"][0]
    assert expires == "1060"
    assert signed_url.check(KEY, "recording", "run-1", expires, signature, now=1059) is None
    assert "expired" in signed_url.check(KEY, "recording", "run-1", expires, signature, now=1061)
    assert "match" in signed_url.check(KEY, "transcript", "run-1", expires, signature, now=1000)
    assert "match" in signed_url.check(KEY, "recording", "run-2", expires, signature, now=1000)
    assert "match" in signed_url.check(KEY, "recording", "run-1", "1061", signature, now=1000)
    assert "match" in signed_url.check(b"other", "recording", "run-1", expires, signature, now=1000)
    assert signed_url.check(KEY, "recording", "run-1", None, signature, now=1000)
    assert signed_url.check(KEY, "recording", "run-1", "-5", signature, now=1000)


# -- end to end --------------------------------------------------------------------------------


def locate(reference: np.ndarray, recorded: np.ndarray) -> tuple[float, int]:
    """(best normalized correlation, lag in samples) of `reference` inside `recorded`."""
    ref = reference.astype(np.float64)
    rec = np.concatenate([recorded.astype(np.float64), np.zeros(ref.size)])
    size = 1 << (rec.size + ref.size).bit_length()
    xc = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)[: rec.size - ref.size + 1]
    power = np.concatenate([[0.0], np.cumsum(rec * rec)])
    energy = np.sqrt(np.maximum(power[ref.size:] - power[:-ref.size], 0.0))
    norm = np.linalg.norm(ref)
    score = np.where(energy > 0.1 * norm, xc / (energy * norm + 1e-9), 0.0)  # near-silent windows: no match
    lag = int(np.argmax(score))
    return float(score[lag]), lag


def read_wav(content: bytes) -> tuple[tuple[int, int, int], np.ndarray]:
    with wave.open(io.BytesIO(content)) as wav:
        shape = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, wav.getnchannels())
    return shape, data


async def ended_call(server):
    return await eventually(lambda: (c := admin_call(server)) and any(t["kind"] == "media.ended" for t in c["timeline"]) and c)


async def test_twilio_call_is_recorded_in_stereo_and_time_aligned(gateway_server):
    caller_signal = speech_like(2.0, seed=1)
    agent_signal_8k = speech_like(1.0, seed=5)[::-1].copy()  # another voice: reversed speech
    agent_signal = soxr.resample(agent_signal_8k, 8000, 16000).astype(np.int16)

    async def script(agent, ws):
        heard = 0
        async for message in ws:
            agent.messages.append(message)
            if isinstance(message, bytes):
                heard += 1
                if heard == 25:  # half a second in, the agent speaks for a second
                    await ws.send(agent_signal.tobytes())
                    await ws.send(json.dumps({"type": "transcript", "role": "user", "text": "hello?", "final": True}))
                    await ws.send(json.dumps({"type": "transcript", "role": "agent", "text": "Hi, how can I", "final": False}))
                    await ws.send(json.dumps({"type": "transcript", "role": "agent", "text": "Hi, how can I help?", "final": True}))

    async with AgentServer(script) as agent:
        server = gateway_server(agent={"url": agent.url}, recording=True)
        client = await TwilioClient.open(server)
        played = []

        async def reader():
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    message = await client.receive_json()
                    if message["event"] == "media":
                        played.append(base64.b64decode(message["media"]["payload"]))

        drain = asyncio.create_task(reader())
        mulaw = audioop.lin2ulaw(caller_signal.tobytes(), 2)
        start = time.monotonic()
        for i in range(100):
            await client.media(mulaw[i * 160:(i + 1) * 160])
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
        await client.send({"event": "stop", "stop": {"accountSid": TWILIO_SID, "callSid": "CA" + "7" * 32}})
        await client.ws.wait_closed()
        drain.cancel()
        call = await ended_call(server)

    assert len(played) == 50  # the agent's second, in 20 ms frames
    media = call["media"]
    ended = next(t for t in call["timeline"] if t["kind"] == "media.ended")["data"]
    assert ended["recording_seconds"] >= 2.0 and "recording_error" not in ended
    assert media["recording_url"].startswith(server.url + f"/api/v1/recordings/{RUN}.wav?expires=")
    assert media["transcript_url"].startswith(server.url + f"/api/v1/transcripts/{RUN}.json?expires=")

    response = httpx.get(media["recording_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    (channels, width, rate), data = read_wav(response.content)
    assert (channels, width, rate) == (2, 2, 16000)
    left, right = data[:, 0], data[:, 1]
    caller_16k = soxr.resample(caller_signal, 8000, 16000)
    score_caller, lag_caller = locate(caller_16k, left)
    score_agent, lag_agent = locate(agent_signal, right)
    assert score_caller > 0.95 and score_agent > 0.95, (score_caller, score_agent)
    assert lag_caller < 0.1 * 16000
    offset = (lag_agent - lag_caller) / 16000
    assert 0.45 <= offset <= 0.62, offset  # the agent spoke after 25 caller frames, on the caller's clock
    assert np.abs(right[: lag_agent - 200]).max() < 50  # silence before the agent spoke
    assert np.abs(right[lag_agent + agent_signal.size + 200:]).max() < 50  # and after
    assert locate(caller_16k, right)[0] < 0.3  # each channel holds one side only
    # Each side alone, as Dograh's user_recording_url / bot_recording_url link them: a mono WAV
    for channel, side in (("caller", left), ("agent", right)):
        alone = httpx.get(channel_link(media["recording_url"], channel))
        assert alone.status_code == 200 and alone.headers["content-type"] == "audio/wav"
        (channels, width, rate), mono = read_wav(alone.content)
        assert (channels, width, rate) == (1, 2, 16000)
        assert np.array_equal(mono.reshape(-1), side)
    wrong = httpx.get(media["recording_url"] + "&channel=both")
    assert wrong.status_code == 400 and "caller, agent" in wrong.json()["detail"]

    transcript = httpx.get(media["transcript_url"])
    assert transcript.status_code == 200
    assert [(line["role"], line["text"]) for line in transcript.json()["lines"]] == [("user", "hello?"), ("agent", "Hi, how can I help?")]
    assert transcript.json()["lines"][0]["at"].endswith("Z")

    # Both links are in the events' call record: a transcript event after media started ...
    store = server.app.state.gateway.store
    events = await store.list_events(run_id=RUN)
    spoken = [e for e in events if e.type == "conversation.transcript"]
    assert spoken and spoken[0].data["media"]["transcript_url"].startswith(server.url + "/api/v1/transcripts/")
    # ... and the call's end, whenever the provider reports it.
    params = {"CallSid": "CA" + "7" * 32, "AccountSid": TWILIO_SID, "CallStatus": "completed", "CallDuration": "3"}
    url = f"{server.url}/api/v1/telephony/status-callback/{RUN}"
    assert httpx.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)}).status_code == 204
    ended_event = next(e for e in await store.list_events(run_id=RUN) if e.type == "call.ended")
    stored = (await store.get_call(RUN)).media  # the admin API re-signs on read; events carry the stored link
    assert ended_event.data["media"]["recording_url"] == stored["recording_url"]
    assert stored["recording_url"].split("?")[0] == media["recording_url"].split("?")[0]


def _tampered(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return f"{parts.scheme}://{parts.netloc}{parts.path}?" + "&".join(f"{k}={v}" for k, v in query.items())


async def test_links_refuse_tampering_and_expiry_and_say_404_when_absent(gateway_server):
    server = gateway_server(recording=True)
    client = await TwilioClient.open(server)
    for _ in range(10):
        await client.media(b"\xff" * 160)
    await client.receive_json()  # the echo is flowing
    call = await eventually(lambda: (c := admin_call(server)) and c["media"].get("recording_url") and c)
    early = httpx.get(call["media"]["recording_url"])
    assert early.status_code == 404 and "yet" in early.json()["detail"]  # published when the media ends
    await client.send({"event": "stop", "stop": {}})
    call = await ended_call(server)
    recording, transcript = call["media"]["recording_url"], call["media"]["transcript_url"]
    assert httpx.get(recording).status_code == 200
    assert httpx.get(transcript).json() == {"workflow_run_id": RUN, "lines": []}

    signature = parse_qs(urlsplit(recording).query)["signature"][0]
    forged = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    assert httpx.get(_tampered(recording, signature=forged)).status_code == 403
    assert httpx.get(_tampered(recording, expires=str(int(time.time()) + 10 ** 6))).status_code == 403
    assert httpx.get(recording.split("?")[0]).status_code == 403
    other_run = recording.replace(f"/{RUN}.wav", "/run-other.wav")
    assert httpx.get(other_run).status_code == 403  # a link opens one call only
    as_transcript = transcript.split("?")[0] + "?" + recording.split("?")[1]
    assert httpx.get(as_transcript).status_code == 403  # ... and one artefact only
    past = int(time.time()) - 10
    expired = f"{server.url}/api/v1/recordings/{RUN}.wav?expires={past}&signature={signed_url.sign(KEY, 'recording', RUN, past)}"
    response = httpx.get(expired)
    assert response.status_code == 403 and "expired" in response.json()["detail"]
    future = int(time.time()) + 60
    absent = f"{server.url}/api/v1/recordings/run-none.wav?expires={future}&signature={signed_url.sign(KEY, 'recording', 'run-none', future)}"
    assert httpx.get(absent).status_code == 404
    absent = f"{server.url}/api/v1/transcripts/run-none.json?expires={future}&signature={signed_url.sign(KEY, 'transcript', 'run-none', future)}"
    assert httpx.get(absent).status_code == 404


async def test_a_restarted_stream_adds_to_the_calls_recording(gateway_server, tmp_path):
    server = gateway_server(recording=True)
    lengths = []
    for session in range(2):  # the provider restarts the stream mid-call: two media sessions, one call
        client = await TwilioClient.open(server)
        for _ in range(50):
            await client.media(b"\xff" * 160)
        await client.receive_json()
        await client.send({"event": "stop", "stop": {}})
        await client.ws.wait_closed()
        call = await eventually(lambda: (c := admin_call(server)) and
                              sum(t["kind"] == "media.ended" for t in c["timeline"]) == session + 1 and c)
        ended = [t for t in call["timeline"] if t["kind"] == "media.ended"][-1]["data"]
        lengths.append(ended["recording_seconds"])
        assert "recording_error" not in ended
    (_, _, rate), data = read_wav(httpx.get(call["media"]["recording_url"]).content)
    assert lengths[0] >= 1.0 and lengths[1] >= 1.0
    assert len(data) / rate == pytest.approx(sum(lengths), abs=0.01)  # both sessions, the first kept
    assert [p.name for p in (tmp_path / "recordings").iterdir()] == [f"{RUN}.wav"]


async def test_the_gateway_recovers_an_interrupted_recording_when_it_starts(gateway_server, tmp_path):
    part = crashed_part(tmp_path, "run-crashed", [stereo(9, 1600)])
    server = gateway_server(recording=True)
    path = tmp_path / "recordings" / "run-crashed.wav"
    await eventually(lambda: path.exists())
    assert not part.exists() and len(wav_samples(path)) == 1600
    assert server.app.state.gateway.config.recording is True


def test_fresh_links_keep_the_path_and_sign_again_from_now():
    stored = {"workflow_run_id": "run-1", "state": "completed", "media": {
        "recording_url": "https://gw.example/api/v1/recordings/run-1.wav?expires=100&signature=old",
        "transcript_url": "https://gw.example/api/v1/transcripts/run-1.json?expires=100&signature=old", "started": True}}
    fresh = with_fresh_links(stored, KEY, now=5000, ttl=60)
    assert stored["media"]["recording_url"].endswith("signature=old")  # the stored record is not touched
    for kind, path in (("recording", "/api/v1/recordings/run-1.wav"), ("transcript", "/api/v1/transcripts/run-1.json")):
        url = urlsplit(fresh["media"][f"{kind}_url"])
        assert f"{url.scheme}://{url.netloc}{url.path}" == "https://gw.example" + path
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        assert query["expires"] == "5060"
        assert signed_url.check(KEY, kind, "run-1", query["expires"], query["signature"], now=5059) is None
    assert fresh["media"]["started"] is True and fresh["state"] == "completed"
    without = {"workflow_run_id": "run-2", "media": {"transcript_url": None}}
    assert with_fresh_links(without, KEY, now=1) == without
    assert with_fresh_links({"workflow_run_id": "run-3", "media": None}, KEY, now=1)["media"] is None


async def test_the_admin_api_hands_out_links_that_outlive_the_stored_ones(gateway_server):
    server = gateway_server(recording=True)
    client = await TwilioClient.open(server)
    await client.media(b"\xff" * 160)
    await client.receive_json()
    await client.send({"event": "stop", "stop": {}})
    await ended_call(server)
    stored = (await server.app.state.gateway.store.get_call(RUN)).media
    ctx = server.app.state.gateway
    later = time.time() + 8 * 24 * 3600  # past the stored links' week
    ctx.clock = lambda: later
    expired = httpx.get(stored["recording_url"])
    assert expired.status_code == 403 and "expired" in expired.json()["detail"]
    media = admin_call(server)["media"]
    assert media["recording_url"].split("?")[0] == stored["recording_url"].split("?")[0]
    assert httpx.get(media["recording_url"]).status_code == 200
    assert httpx.get(media["transcript_url"]).json() == {"workflow_run_id": RUN, "lines": []}
    listed = httpx.get(server.url + "/api/v1/calls", headers={"Authorization": f"Bearer {ctx.config.api_key.get_secret_value()}"})
    (call,) = listed.json()["calls"]
    assert httpx.get(call["media"]["recording_url"]).status_code == 200


async def test_recording_follows_the_workflow_list(gateway_server, tmp_path):
    server = gateway_server(recording=["wf-other"])  # this call's workflow is wf-m
    client = await TwilioClient.open(server)
    await client.media(b"\xff" * 160)
    await client.receive_json()
    await client.send({"event": "stop", "stop": {}})
    call = await ended_call(server)
    assert "recording_url" not in call["media"] and call["media"]["transcript_url"]
    assert not (tmp_path / "recordings").exists()


async def test_vonage_call_is_recorded(gateway_server, tmp_path):
    server = gateway_server(recording=["wf-m"])
    token = vonage_jwt(b"")
    async with httpx.AsyncClient() as http:
        answer = await http.get(server.url + WEBHOOK, params={"uuid": "aaaaaaaa-0000-0000-0000-000000000002", "to": "1", "from": "2"},
                                headers={"Authorization": f"Bearer {token}"})
    endpoint = answer.json()[0]["endpoint"][0]
    from websockets.asyncio.client import connect

    signal = speech_like(1.0, rate=16000)
    async with connect(endpoint["uri"], compression=None, proxy=None) as ws:
        await ws.send(json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"], **endpoint["headers"]}))
        start = time.monotonic()
        for i in range(50):
            await ws.send(signal[i * 320:(i + 1) * 320].tobytes())
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
        got = 0
        while got < 50:
            assert len(await asyncio.wait_for(ws.recv(), 5)) == 640
            got += 1
    call = await ended_call(server)
    (channels, _, rate), data = read_wav(httpx.get(call["media"]["recording_url"]).content)
    assert (channels, rate) == (2, 16000)
    score_caller, lag_caller = locate(signal, data[:, 0])
    score_agent, lag_agent = locate(signal, data[:, 1])  # the echo agent plays the caller back
    assert score_caller > 0.99 and score_agent > 0.99
    assert 0 <= lag_agent - lag_caller < 0.1 * 16000  # echoed within a few frames
    assert list((tmp_path / "recordings").iterdir()) == [tmp_path / "recordings" / f"{RUN}.wav"]


def test_timeline_joins_slightly_late_agent_frames_without_holes():
    t = RecordingTimeline(TWILIO_FORMAT, start=0.0)
    at = 1.0
    for i in range(20):
        t.agent(b"\x03" * 160, at)
        at += 0.02 + (0.004 if i % 3 == 0 else 0.0)  # the provider went idle for a few ms now and then
    _, agent = t.take_all()
    assert agent[8000:8000 + 20 * 160] == b"\x03" * 20 * 160
