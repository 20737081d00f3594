"""`gateway simulate`: play Twilio or Vonage against a running gateway, exactly as they would.

Signed initial webhook, the media stream in real time (a WAV file, or a built-in speech-like
test signal), status callbacks through to `completed`; then the call's timeline, what the
agent sent back, and the deliveries made. For trying the gateway with no phone and no account:
it signs with the secrets in the gateway's own configuration.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
import wave
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from gateway.audio import PLIVO_FORMAT, TELNYX_FORMAT, TWILIO_FORMAT, VONAGE_FORMAT, AudioFormat, Transcoder
from gateway.config import GatewayConfig

WIRE_FORMATS = {"twilio": TWILIO_FORMAT, "vonage": VONAGE_FORMAT, "telnyx": TELNYX_FORMAT, "plivo": PLIVO_FORMAT}
TELNYX_KEY_ENV = "GATEWAY_SIMULATE_TELNYX_KEY"
"""The base64 Ed25519 private key (32-byte seed) the Telnyx simulation signs with; the
gateway's `providers.telnyx.public_key` must be its public half."""


class SimulationError(Exception):
    """The gateway did not answer as a provider expects; str() says where."""


@dataclass
class SimulationResult:
    run_id: str
    frames_sent: int = 0
    frames_received: int = 0
    agent_audio_seconds: float = 0.0
    marks: list[str] = field(default_factory=list)
    clears: int = 0
    call: dict[str, Any] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)


def speech_like_signal(seconds: float, rate: int = 8000) -> np.ndarray:
    """A voiced, syllable-shaped signal (harmonics under a 4 Hz envelope), int16."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum((0.5 / k) * np.sin(k * phase) for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 0.5
    signal = voice * envelope
    return (signal / (np.max(np.abs(signal)) or 1) * 10000).astype(np.int16)


def read_wav(path: str, fmt: AudioFormat) -> bytes:
    """A mono 16-bit WAV at 8/16/24/48 kHz, converted to the provider's format."""
    with wave.open(path, "rb") as wav:
        if wav.getsampwidth() != 2:
            raise SimulationError(f"{path}: only 16-bit PCM WAV files are supported")
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        if wav.getnchannels() > 1:
            frames = frames.reshape(-1, wav.getnchannels())[:, 0].copy()
        rate = wav.getframerate()
    source = AudioFormat("pcm16", rate)
    transcoder = Transcoder(source, fmt)
    return transcoder.process(frames.tobytes()) + transcoder.flush()


class ProviderSimulator:
    """One simulated call against `base_url` (the gateway's address), signed with `config`."""

    def __init__(self, config: GatewayConfig, base_url: str, *, provider: str = "twilio",
                 to: str = "+15550100", from_: str = "+15550199", workflow_id: str = "sim-workflow",
                 user_id: str = "sim-user", seconds: float = 3.0, audio: bytes | None = None) -> None:
        self.config = config
        self.base = base_url.rstrip("/")
        self.provider = provider
        self.to, self.from_ = to, from_
        self.workflow_id, self.user_id = workflow_id, user_id
        self.run_id = f"sim-{uuid.uuid4().hex[:12]}"
        self.call_id = {"twilio": "CA" + uuid.uuid4().hex, "telnyx": "v3:" + uuid.uuid4().hex}.get(provider, str(uuid.uuid4()))
        fmt = WIRE_FORMATS[provider]
        self.audio = audio if audio is not None else Transcoder(AudioFormat("pcm16", 8000), fmt).process(speech_like_signal(seconds).tobytes())
        self.frame_bytes = fmt.frame_bytes()
        self.sequence = 0

    # -- signing, as each provider signs ---------------------------------------------------
    def _twilio(self, method: str, path: str, params: dict[str, str]) -> httpx.Request:
        settings = self.config.providers.twilio
        if settings is None:
            raise SimulationError("providers.twilio is not configured in this gateway's config")
        url = self.base + path
        public = self.config.public_url if self.config.public_url not in (None, "auto") else self.base
        signed_url = public.rstrip("/") + path  # providers sign the public URL they called
        signature = RequestValidator(settings.auth_token.get_secret_value()).compute_signature(signed_url, params)
        return httpx.Request(method, url, data=params, headers={"X-Twilio-Signature": signature})

    def _vonage_token(self, body: bytes) -> str:
        settings = self.config.providers.vonage
        if settings is None:
            raise SimulationError("providers.vonage is not configured in this gateway's config")
        claims: dict[str, Any] = {"iat": int(time.time()), "jti": str(uuid.uuid4()), "iss": "Vonage"}
        if settings.api_key:
            claims["api_key"] = settings.api_key
        if settings.application_id:
            claims["application_id"] = settings.application_id
        if body:
            claims["payload_hash"] = hashlib.sha256(body).hexdigest()
        return jwt.encode(claims, settings.signature_secret.get_secret_value(), algorithm="HS256")

    def _vonage_post(self, path: str, data: dict[str, Any]) -> httpx.Request:
        body = json.dumps(data).encode()
        return httpx.Request("POST", self.base + path, content=body,
                             headers={"Authorization": f"Bearer {self._vonage_token(body)}", "Content-Type": "application/json"})

    # -- the call ------------------------------------------------------------------------------
    async def run(self, client: httpx.AsyncClient) -> SimulationResult:
        result = SimulationResult(self.run_id)
        webhook = f"/api/v1/telephony/webhook/{self.workflow_id}/{self.user_id}/{self.run_id}"
        status_path = f"/api/v1/telephony/status-callback/{self.run_id}"
        if self.provider == "telnyx":
            await run_telnyx(self, client, webhook, status_path, result)
        elif self.provider == "plivo":
            await run_plivo(self, client, webhook, status_path, result)
        elif self.provider == "twilio":
            await self._status(client, status_path, "initiated")
            await self._status(client, status_path, "ringing")
            answer = await client.send(self._twilio("POST", webhook, self._twilio_params("in-progress")))
            if answer.status_code != 200:
                raise SimulationError(f"initial webhook answered {answer.status_code}: {answer.text[:300]}")
            stream = ET.fromstring(answer.text).find("./Connect/Stream")
            if stream is None:
                raise SimulationError("the TwiML has no <Connect><Stream>")
            ws_url = stream.get("url")
            parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
            await self._status(client, status_path, "in-progress")
            await self._twilio_media(ws_url, parameters, result)
        else:
            params = {"uuid": self.call_id, "conversation_uuid": "CON-" + self.call_id, "to": self.to, "from": self.from_}
            token = self._vonage_token(b"")
            answer = await client.get(self.base + webhook, params=params, headers={"Authorization": f"Bearer {token}"})
            if answer.status_code != 200:
                raise SimulationError(f"answer URL answered {answer.status_code}: {answer.text[:300]}")
            endpoint = answer.json()[0]["endpoint"][0]
            for status in ("started", "ringing", "answered"):
                await self._status(client, status_path, status)
            await self._vonage_media(endpoint, result)
        await self._status(client, status_path, "completed")
        await asyncio.sleep(0.5)  # let the delivery worker send what the call produced
        await self._collect(client, result)
        return result

    def _twilio_params(self, status: str, **extra: str) -> dict[str, str]:
        self.sequence += 1
        return {"CallSid": self.call_id, "AccountSid": getattr(self.config.providers.twilio, "account_sid", "AC"),
                "From": self.from_, "To": self.to, "CallStatus": status, "Direction": "outbound-api",
                "SequenceNumber": str(self.sequence), "CallbackSource": "call-progress-events", **extra}

    async def _status(self, client: httpx.AsyncClient, path: str, status: str) -> None:
        if self.provider == "telnyx":
            await telnyx_status(self, client, path, status)
            return
        if self.provider == "plivo":
            await plivo_status(self, client, path, status)
            return
        if self.provider == "twilio":
            extra = {"CallDuration": str(int(len(self.audio) / 8000))} if status == "completed" else {}
            request = self._twilio("POST", path, self._twilio_params(status, **extra))
        else:
            data = {"uuid": self.call_id, "conversation_uuid": "CON-" + self.call_id, "status": status,
                    "direction": "outbound", "from": self.from_, "to": self.to,
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
            if status == "completed":
                data["duration"] = str(int(len(self.audio) / 32000))
            request = self._vonage_post(path, data)
        response = await client.send(request)
        if response.status_code >= 300:
            raise SimulationError(f"status callback {status!r} answered {response.status_code}: {response.text[:300]}")

    async def _twilio_media(self, ws_url: str, parameters: dict[str, str], result: SimulationResult) -> None:
        token = self.config.providers.twilio.auth_token.get_secret_value()
        headers = {"X-Twilio-Signature": RequestValidator(token).compute_signature(ws_url, {})}  # Twilio signs the wss:// URL
        local_url = self._local(ws_url)
        stream_sid = "MZ" + uuid.uuid4().hex
        async with connect(local_url, additional_headers=headers, proxy=None, compression=None) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
                "streamSid": stream_sid, "accountSid": "AC", "callSid": self.call_id, "tracks": ["inbound"],
                "customParameters": parameters, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            reader = asyncio.create_task(self._read_twilio(ws, result))
            started = time.monotonic()
            for index in range(0, len(self.audio) - self.frame_bytes + 1, self.frame_bytes):
                frame = self.audio[index:index + self.frame_bytes]
                await ws.send(json.dumps({"event": "media", "streamSid": stream_sid, "media": {
                    "track": "inbound", "chunk": str(result.frames_sent + 1), "timestamp": str(result.frames_sent * 20),
                    "payload": base64.b64encode(frame).decode()}}))
                result.frames_sent += 1
                await asyncio.sleep(max(0.0, started + result.frames_sent * 0.02 - time.monotonic()))
            await asyncio.sleep(0.5)
            await ws.send(json.dumps({"event": "stop", "streamSid": stream_sid, "stop": {"callSid": self.call_id}}))
            await asyncio.sleep(0.2)
            reader.cancel()
        result.agent_audio_seconds = result.frames_received * 0.02

    def _local(self, ws_url: str) -> str:
        """The gateway's own address for a WebSocket URL handed out under its public host."""
        return self.base.replace("http", "ws", 1) + "/api/" + ws_url.split("/api/", 1)[1]

    async def _read_twilio(self, ws: Any, result: SimulationResult) -> None:
        async for message in ws:
            data = json.loads(message)
            if data.get("event") == "media":
                result.frames_received += 1
            elif data.get("event") == "mark":
                result.marks.append(data["mark"]["name"])
                await ws.send(json.dumps({"event": "mark", "streamSid": data["streamSid"], "mark": data["mark"]}))
            elif data.get("event") == "clear":
                result.clears += 1

    async def _vonage_media(self, endpoint: dict[str, Any], result: SimulationResult) -> None:
        async with connect(self._local(endpoint["uri"]), proxy=None, compression=None) as ws:
            await ws.send(json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"], **endpoint["headers"]}))
            reader = asyncio.create_task(self._read_vonage(ws, result))
            started = time.monotonic()
            for index in range(0, len(self.audio) - self.frame_bytes + 1, self.frame_bytes):
                await ws.send(self.audio[index:index + self.frame_bytes])
                result.frames_sent += 1
                await asyncio.sleep(max(0.0, started + result.frames_sent * 0.02 - time.monotonic()))
            await asyncio.sleep(0.5)
            reader.cancel()
        result.agent_audio_seconds = result.frames_received * 0.02

    async def _read_vonage(self, ws: Any, result: SimulationResult) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                result.frames_received += 1

    async def _collect(self, client: httpx.AsyncClient, result: SimulationResult) -> None:
        if self.config.api_key is None:
            return
        headers = {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"}
        call = await client.get(f"{self.base}/api/v1/calls/{self.run_id}", headers=headers)
        if call.status_code == 200:
            result.call = call.json()
        deliveries = await client.get(f"{self.base}/api/v1/deliveries", params={"run": self.run_id}, headers=headers)
        if deliveries.status_code == 200:
            result.deliveries = deliveries.json()["deliveries"]


# -- Telnyx (TeXML) ----------------------------------------------------------------------------


async def _send_paced(sim: ProviderSimulator, result: SimulationResult, ws: Any, message: Any) -> None:
    """Send the audio in real time, one frame each 20 ms; `message(n, frame)` is the n-th frame's text."""
    started = time.monotonic()
    for index in range(0, len(sim.audio) - sim.frame_bytes + 1, sim.frame_bytes):
        result.frames_sent += 1
        await ws.send(message(result.frames_sent, sim.audio[index:index + sim.frame_bytes]))
        await asyncio.sleep(max(0.0, started + result.frames_sent * 0.02 - time.monotonic()))


def _telnyx_post(sim: ProviderSimulator, path: str, params: dict[str, str]) -> httpx.Request:
    """A form POST signed as Telnyx signs: Ed25519 over `timestamp|body`."""
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if sim.config.providers.telnyx is None:
        raise SimulationError("providers.telnyx is not configured in this gateway's config")
    seed = os.environ.get(TELNYX_KEY_ENV)
    if not seed:
        raise SimulationError(f"set {TELNYX_KEY_ENV} to the base64 private key whose public half is providers.telnyx.public_key")
    try:
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed, validate=True))
    except ValueError:
        raise SimulationError(f"{TELNYX_KEY_ENV} is not a base64 32-byte Ed25519 private key") from None
    body = httpx.QueryParams(params).__str__().encode()
    stamp = str(int(time.time()))
    signature = base64.b64encode(key.sign(stamp.encode() + b"|" + body)).decode()
    return httpx.Request("POST", sim.base + path, content=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp})


def _telnyx_params(sim: ProviderSimulator, status: str, **extra: str) -> dict[str, str]:
    sim.sequence += 1
    return {"CallSid": sim.call_id, "AccountSid": "simulated", "From": sim.from_, "To": sim.to, "CallStatus": status,
            "Direction": "outbound", "SequenceNumber": str(sim.sequence), **extra}


async def telnyx_status(sim: ProviderSimulator, client: httpx.AsyncClient, path: str, status: str) -> None:
    extra = {"CallDuration": str(int(len(sim.audio) / 8000))} if status == "completed" else {}
    response = await client.send(_telnyx_post(sim, path, _telnyx_params(sim, status, **extra)))
    if response.status_code >= 300:
        raise SimulationError(f"status callback {status!r} answered {response.status_code}: {response.text[:300]}")


async def run_telnyx(sim: ProviderSimulator, client: httpx.AsyncClient, webhook: str, status_path: str,
                     result: SimulationResult) -> None:
    """Telnyx's side of a call: TeXML fetch, `<Connect><Stream>` media, status callbacks."""
    await sim._status(client, status_path, "initiated")
    await sim._status(client, status_path, "ringing")
    answer = await client.send(_telnyx_post(sim, webhook, _telnyx_params(sim, "in-progress")))
    if answer.status_code != 200:
        raise SimulationError(f"TeXML webhook answered {answer.status_code}: {answer.text[:300]}")
    stream = ET.fromstring(answer.text).find("./Connect/Stream")
    if stream is None:
        raise SimulationError("the TeXML has no <Connect><Stream>")
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    await sim._status(client, status_path, "in-progress")
    stream_id = str(uuid.uuid4())
    codec = stream.get("codec") or "PCMU"
    if codec == "PCMA":  # the stream's codec, as Telnyx would send it
        sim.audio = Transcoder(TELNYX_FORMAT, AudioFormat("alaw", 8000)).process(sim.audio)
    async with connect(sim._local(stream.get("url") or ""), proxy=None, compression=None) as ws:
        await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "sequence_number": "1", "stream_id": stream_id, "start": {
            "call_control_id": sim.call_id, "from": sim.from_, "to": sim.to, "custom_parameters": parameters,
            "media_format": {"encoding": codec, "sample_rate": 8000, "channels": 1}}}))
        reader = asyncio.create_task(_read_telnyx(ws, result))
        await _send_paced(sim, result, ws, lambda n, frame: json.dumps({
            "event": "media", "sequence_number": str(n + 1), "stream_id": stream_id,
            "media": {"track": "inbound", "chunk": str(n), "timestamp": str(n * 20), "payload": base64.b64encode(frame).decode()}}))
        await asyncio.sleep(0.5)
        await ws.send(json.dumps({"event": "stop", "stream_id": stream_id, "stop": {"call_control_id": sim.call_id}}))
        await asyncio.sleep(0.2)
        reader.cancel()
    result.agent_audio_seconds = result.frames_received * 0.02


async def _read_telnyx(ws: Any, result: SimulationResult) -> None:
    async for message in ws:
        data = json.loads(message)
        if data.get("event") == "media":
            result.frames_received += 1
        elif data.get("event") == "mark":  # Telnyx echoes a mark once the audio before it has played
            result.marks.append(data["mark"]["name"])
            await ws.send(json.dumps({"event": "mark", "mark": data["mark"]}))
        elif data.get("event") == "clear":
            result.clears += 1


# -- Plivo ------------------------------------------------------------------------------------


def _plivo_signed(sim: ProviderSimulator, method: str, url: str, params: dict[str, str]) -> dict[str, str]:
    """The V3 headers Plivo sends, over the public URL it calls."""
    from gateway.providers.plivo import signature_v3

    settings = sim.config.providers.plivo
    if settings is None:
        raise SimulationError("providers.plivo is not configured in this gateway's config")
    nonce = str(uuid.uuid4().int)[:20]
    signature = signature_v3(settings.auth_token.get_secret_value(), method, url, params, nonce)
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


def _plivo_post(sim: ProviderSimulator, path: str, params: dict[str, str]) -> httpx.Request:
    public = sim.config.public_url if sim.config.public_url not in (None, "auto") else sim.base
    headers = _plivo_signed(sim, "POST", public.rstrip("/") + path, params)
    return httpx.Request("POST", sim.base + path, data=params, headers=headers)


def _plivo_params(sim: ProviderSimulator, status: str, **extra: str) -> dict[str, str]:
    return {"CallUUID": sim.call_id, "From": sim.from_.lstrip("+"), "To": sim.to.lstrip("+"), "CallStatus": status,
            "Direction": "outbound", **extra}


async def plivo_status(sim: ProviderSimulator, client: httpx.AsyncClient, path: str, status: str) -> None:
    extra = {"Event": "Hangup", "Duration": str(int(len(sim.audio) / 8000))} if status == "completed" else {"Event": "Ring"}
    response = await client.send(_plivo_post(sim, path, _plivo_params(sim, status, **extra)))
    if response.status_code >= 300:
        raise SimulationError(f"status callback {status!r} answered {response.status_code}: {response.text[:300]}")


async def run_plivo(sim: ProviderSimulator, client: httpx.AsyncClient, webhook: str, status_path: str,
                    result: SimulationResult) -> None:
    """Plivo's side of a call: ring, answer XML, a signed bidirectional `<Stream>`, hangup."""
    await sim._status(client, status_path, "ringing")
    answer = await client.send(_plivo_post(sim, webhook, _plivo_params(sim, "in-progress", Event="StartApp")))
    if answer.status_code != 200:
        raise SimulationError(f"answer URL answered {answer.status_code}: {answer.text[:300]}")
    stream = ET.fromstring(answer.text).find("./Stream")
    if stream is None or not stream.text:
        raise SimulationError("the answer XML has no <Stream>")
    stream_id = str(uuid.uuid4())
    headers = _plivo_signed(sim, "GET", stream.text, {})  # Plivo signs the upgrade too
    async with connect(sim._local(stream.text), additional_headers=headers, proxy=None, compression=None) as ws:
        await ws.send(json.dumps({"event": "start", "sequenceNumber": 1, "extra_headers": stream.get("extraHeaders", ""),
                                  "start": {"callId": sim.call_id, "streamId": stream_id, "accountId": "simulated",
                                            "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}}))
        reader = asyncio.create_task(_read_plivo(ws, result))
        await _send_paced(sim, result, ws, lambda n, frame: json.dumps({
            "event": "media", "sequenceNumber": n + 1, "streamId": stream_id,
            "media": {"track": "inbound", "timestamp": str(int(time.time() * 1000)), "chunk": n,
                      "payload": base64.b64encode(frame).decode()}}))
        await asyncio.sleep(0.5)
        reader.cancel()
    result.agent_audio_seconds = result.frames_received * 0.02


async def _read_plivo(ws: Any, result: SimulationResult) -> None:
    async for message in ws:
        data = json.loads(message)
        if data.get("event") == "playAudio":
            result.frames_received += 1
        elif data.get("event") == "checkpoint":  # Plivo answers when the audio before it has played
            result.marks.append(data["name"])
            await ws.send(json.dumps({"event": "playedStream", "streamId": data.get("streamId"), "name": data["name"]}))
        elif data.get("event") == "clearAudio":
            result.clears += 1
            await ws.send(json.dumps({"event": "clearedAudio", "streamId": data.get("streamId")}))


def report(result: SimulationResult) -> str:
    """The human summary `gateway simulate` prints."""
    lines = [f"call {result.run_id}: state={result.call.get('state', '?')} duration={result.call.get('duration')}",
             f"audio: sent {result.frames_sent} frames ({result.frames_sent * 0.02:.1f} s); "
             f"the agent sent back {result.frames_received} frames ({result.agent_audio_seconds:.1f} s)"
             + (f", marks {result.marks}" if result.marks else "") + (f", {result.clears} clears" if result.clears else ""),
             "timeline:"]
    for entry in result.call.get("timeline", []):
        lines.append(f"  {entry['received_at']}  {entry['source']:<7} {entry['kind']:<16} {entry.get('raw_status') or '':<12} {entry['outcome']}")
    lines.append(f"deliveries ({len(result.deliveries)}):")
    for delivery in result.deliveries:
        lines.append(f"  {delivery['id']}  {delivery['subscription']:<14} {delivery['event_type']:<26} {delivery['status']}"
                     f" attempts={delivery['attempts']} last={delivery['last_status'] or delivery['last_error'] or '-'}")
    if not result.deliveries:
        lines.append("  none (no webhooks configured, or none matched)")
    return "\n".join(lines)


async def simulate(config: GatewayConfig, base_url: str, **kwargs: Any) -> SimulationResult:
    async with httpx.AsyncClient(timeout=15) as client:
        return await ProviderSimulator(config, base_url, **kwargs).run(client)
