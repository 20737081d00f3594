"""`gateway simulate`: play Twilio or Vonage against a running gateway, exactly as they would.

An outbound call to a run id (`/webhook/WORKFLOW/USER/RUN`) or a call to a number
(`/inbound/WORKFLOW/USER`, the gateway mints the run id), signed as the provider signs; the
status callbacks of the chosen outcome (completed, busy, no-answer, failed, or a voicemail
that is answered); the media stream in real time (a WAV file, or a built-in speech-like tone);
then the call's timeline, what the agent sent back (optionally saved to a WAV), and the webhook
deliveries the call produced. It signs with the secrets of the gateway's own configuration
(with no config file: the development secrets `gateway serve` generated in the same directory).

Every failure is a `SimulationError` whose message says what went wrong, in one line.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import json
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from gateway.audio import PLIVO_FORMAT, TELNYX_FORMAT, TWILIO_FORMAT, VONAGE_FORMAT, AudioFormat, Transcoder
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.redact import redact_url
from gateway.simulate_audio import generated_audio

TELEPHONY = "/api/v1/telephony"

WIRE_FORMATS = {"twilio": TWILIO_FORMAT, "vonage": VONAGE_FORMAT, "telnyx": TELNYX_FORMAT, "plivo": PLIVO_FORMAT}
TELNYX_KEY_ENV = "GATEWAY_SIMULATE_TELNYX_KEY"
"""The base64 Ed25519 private key (32-byte seed) the Telnyx simulation signs with; the
gateway's `providers.telnyx.public_key` must be its public half."""


class SimulationError(GatewayError):
    """The simulation could not go on; str() says where and why, in one line."""


class Outcome(enum.Enum):
    """How the simulated call ends."""

    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    VOICEMAIL = "voicemail"  # answered by a machine: media flows, the call is marked voicemail


# The provider's status words for a call that is never answered, in order.
UNANSWERED: dict[str, dict[Outcome, tuple[str, ...]]] = {
    "twilio": {
        Outcome.BUSY: ("initiated", "ringing", "busy"),
        Outcome.NO_ANSWER: ("initiated", "ringing", "no-answer"),
        Outcome.FAILED: ("initiated", "failed"),
    },
    "vonage": {
        Outcome.BUSY: ("started", "ringing", "busy"),
        Outcome.NO_ANSWER: ("started", "ringing", "timeout"),
        Outcome.FAILED: ("started", "failed"),
    },
    "telnyx": {
        Outcome.BUSY: ("initiated", "ringing", "busy"),
        Outcome.NO_ANSWER: ("initiated", "ringing", "no-answer"),
        Outcome.FAILED: ("initiated", "failed"),
    },
    "plivo": {
        Outcome.BUSY: ("ringing", "busy"),
        Outcome.NO_ANSWER: ("ringing", "no-answer"),
        Outcome.FAILED: ("failed",),
    },
}
PLIVO_HANGUPS = frozenset({"completed", "busy", "failed", "timeout", "no-answer", "canceled"})


@dataclass(frozen=True)
class CallPlan:
    """What to simulate."""

    provider: str = "twilio"
    to: str = "+15550100"
    from_: str = "+15550199"
    workflow_id: str = "sim-workflow"
    user_id: str = "sim-user"
    seconds: float = 3.0
    audio: bytes | None = None  # in the provider's format; None: the built-in tone for `seconds`
    inbound: bool = False  # a call to a number: /inbound/WORKFLOW/USER, the gateway mints the run id
    outcome: Outcome = Outcome.COMPLETED
    initial_context: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise `SimulationError` for combinations no provider produces."""
        if self.inbound and self.outcome not in (Outcome.COMPLETED,):
            raise SimulationError(
                f"--outcome {self.outcome.value} is for outbound calls; a call to a number is answered"
            )
        if self.inbound and self.initial_context:
            raise SimulationError(
                "--initial-context is for outbound calls (a run created before it is dialed); "
                "an inbound call's run is minted by the gateway"
            )


@dataclass
class SimulationResult:
    run_id: str
    frames_sent: int = 0
    frames_received: int = 0
    agent_audio: bytearray = field(default_factory=bytearray)
    marks: list[str] = field(default_factory=list)
    clears: int = 0
    call: dict[str, Any] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def agent_audio_seconds(self) -> float:
        return self.frames_received * 0.02


def provider_format(provider: str) -> AudioFormat:
    """The wire format of a provider's media stream."""
    return WIRE_FORMATS[provider]


class ProviderSimulator:
    """One simulated call against `base_url` (the gateway's address), signed with `config`."""

    def __init__(self, config: GatewayConfig, base_url: str, plan: CallPlan) -> None:
        plan.check()
        self.config = config
        self.base = base_url.rstrip("/")
        self.plan = plan
        self.provider = plan.provider
        self.run_id = f"sim-{uuid.uuid4().hex[:12]}"
        self.call_id = {"twilio": "CA" + uuid.uuid4().hex, "telnyx": "v3:" + uuid.uuid4().hex}.get(
            self.provider, str(uuid.uuid4())
        )
        fmt = provider_format(self.provider)
        self.audio = plan.audio if plan.audio is not None else generated_audio(plan.seconds, fmt)
        self.frame_bytes = fmt.frame_bytes()
        self.sequence = 0
        self.origin = self.base
        settings = getattr(config.providers, self.provider)
        if settings is None:
            raise SimulationError(
                f"providers.{self.provider} is not configured in the gateway's configuration "
                "(with no config file, gateway serve makes test credentials for both)"
            )
        self.settings = settings

    # -- signing, as each provider signs ---------------------------------------------------
    def _signed_url(self, path: str) -> str:
        return self.origin.rstrip("/") + path  # providers sign the public URL they called

    async def find_origin(self, client: httpx.AsyncClient) -> None:
        """The origin the gateway checks signatures over: it says so at `GET /api/v1/tunnel`
        (public_url, the tunnel it found, or the request's own host); else from the config."""
        self.origin = self.config.public_url if self.config.public_url not in (None, "auto") else self.base
        if self.config.api_key is None:
            return
        answer = await client.get(
            f"{self.base}/api/v1/tunnel", headers={"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"}
        )
        if answer.status_code == 200:
            self.origin = answer.json().get("origin") or self.origin

    def _twilio(self, path: str, params: dict[str, str]) -> httpx.Request:
        signature = RequestValidator(self.settings.auth_token.get_secret_value()).compute_signature(
            self._signed_url(path), params
        )
        return httpx.Request("POST", self.base + path, data=params, headers={"X-Twilio-Signature": signature})

    def _vonage_token(self, body: bytes) -> str:
        claims: dict[str, Any] = {"iat": int(time.time()), "jti": str(uuid.uuid4()), "iss": "Vonage"}
        if self.settings.api_key:
            claims["api_key"] = self.settings.api_key
        if self.settings.application_id:
            claims["application_id"] = self.settings.application_id
        if body:
            claims["payload_hash"] = hashlib.sha256(body).hexdigest()
        return jwt.encode(claims, self.settings.signature_secret.get_secret_value(), algorithm="HS256")

    def _vonage_post(self, path: str, data: dict[str, Any]) -> httpx.Request:
        body = json.dumps(data).encode()
        return httpx.Request(
            "POST",
            self.base + path,
            content=body,
            headers={"Authorization": f"Bearer {self._vonage_token(body)}", "Content-Type": "application/json"},
        )

    # -- the call ------------------------------------------------------------------------------
    @property
    def _answer_path(self) -> str:
        ids = f"{self.plan.workflow_id}/{self.plan.user_id}"
        return f"{TELEPHONY}/inbound/{ids}" if self.plan.inbound else f"{TELEPHONY}/webhook/{ids}/{self.run_id}"

    @property
    def _status_path(self) -> str:
        # A number's callbacks go to the provider's catch-all URL, matched by the provider's call id.
        return f"{TELEPHONY}/status-callback/{self.provider if self.plan.inbound else self.run_id}"

    async def run(self, client: httpx.AsyncClient) -> SimulationResult:
        await self.find_origin(client)
        if self.plan.initial_context:
            await create_run(self.config, self.run_id, self.plan)
        words = UNANSWERED[self.provider].get(self.plan.outcome)
        result = SimulationResult(self.run_id)
        if words is not None:
            for word in words:
                await self._status(client, word)
        elif self.provider in ("telnyx", "plivo") and self.plan.outcome is Outcome.VOICEMAIL:
            raise SimulationError(f"--outcome voicemail is simulated for twilio and vonage, not {self.provider}")
        elif self.provider == "telnyx":
            await run_telnyx(self, client, self._answer_path, result)
        elif self.provider == "plivo":
            await run_plivo(self, client, self._answer_path, result)
        elif self.provider == "twilio":
            await self._twilio_call(client, result)
        else:
            await self._vonage_call(client, result)
        await self._collect(client, result)
        return result

    async def _twilio_call(self, client: httpx.AsyncClient, result: SimulationResult) -> None:
        machine = {"AnsweredBy": "machine_start"} if self.plan.outcome is Outcome.VOICEMAIL else {}
        if not self.plan.inbound:
            await self._status(client, "initiated")
            await self._status(client, "ringing")
        answer = await client.send(
            self._twilio(
                self._answer_path, self._twilio_params("ringing" if self.plan.inbound else "in-progress", **machine)
            )
        )
        if answer.status_code != 200:
            raise SimulationError(f"the answer webhook got {answer.status_code}: {_detail(answer)}")
        try:
            stream = ET.fromstring(answer.text).find("./Connect/Stream")
        except ET.ParseError:
            raise SimulationError(f"the answer webhook's reply is not TwiML: {answer.text[:200]!r}") from None
        if stream is None or not stream.get("url"):
            raise SimulationError("the TwiML has no <Connect><Stream url>")
        parameters = {p.get("name") or "": p.get("value") or "" for p in stream.findall("Parameter")}
        result.run_id = self.run_id = parameters.get("workflow_run_id") or self.run_id
        await self._status(client, "in-progress", **machine)
        await self._twilio_media(stream.get("url") or "", parameters, result)
        await self._status(client, "completed")

    async def _vonage_call(self, client: httpx.AsyncClient, result: SimulationResult) -> None:
        params = {
            "uuid": self.call_id,
            "conversation_uuid": "CON-" + self.call_id,
            "to": self.plan.to,
            "from": self.plan.from_,
        }
        answer = await client.get(
            self.base + self._answer_path, params=params, headers={"Authorization": f"Bearer {self._vonage_token(b'')}"}
        )
        if answer.status_code != 200:
            raise SimulationError(f"the answer URL got {answer.status_code}: {_detail(answer)}")
        try:
            endpoint = answer.json()[0]["endpoint"][0]
            uri, headers = endpoint["uri"], endpoint["headers"]
        except (ValueError, LookupError, TypeError):
            raise SimulationError(f"the answer URL's reply is not a connect NCCO: {answer.text[:200]!r}") from None
        result.run_id = self.run_id = headers.get("workflow_run_id") or self.run_id
        for status in ("started", "ringing", "answered"):
            await self._status(client, status)
        if self.plan.outcome is Outcome.VOICEMAIL:
            await self._status(client, "machine")
        await self._vonage_media(uri, endpoint.get("content-type", "audio/l16;rate=16000"), headers, result)
        await self._status(client, "completed")

    def _twilio_params(self, status: str, **extra: str) -> dict[str, str]:
        self.sequence += 1
        return {
            "CallSid": self.call_id,
            "AccountSid": self.settings.account_sid,
            "From": self.plan.from_,
            "To": self.plan.to,
            "CallStatus": status,
            "Direction": "inbound" if self.plan.inbound else "outbound-api",
            "SequenceNumber": str(self.sequence),
            "CallbackSource": "call-progress-events",
            **extra,
        }

    async def _status(self, client: httpx.AsyncClient, status: str, **extra: str) -> None:
        if self.provider == "telnyx":
            await telnyx_status(self, client, self._status_path, status)
            return
        if self.provider == "plivo":
            await plivo_status(self, client, self._status_path, status)
            return
        if self.provider == "twilio":
            if status == "completed":
                extra["CallDuration"] = str(int(len(self.audio) / 8000))
            request = self._twilio(self._status_path, self._twilio_params(status, **extra))
        else:
            data = {
                "uuid" if status != "machine" else "call_uuid": self.call_id,
                "conversation_uuid": "CON-" + self.call_id,
                "status": status,
                "direction": "inbound" if self.plan.inbound else "outbound",
                "from": self.plan.from_,
                "to": self.plan.to,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            }
            if status == "completed":
                data["duration"] = str(int(len(self.audio) / 32000))
            request = self._vonage_post(self._status_path, data)
        response = await client.send(request)
        if response.status_code >= 300:
            raise SimulationError(f"the status callback {status!r} got {response.status_code}: {_detail(response)}")

    async def _twilio_media(self, ws_url: str, parameters: dict[str, str], result: SimulationResult) -> None:
        token = self.settings.auth_token.get_secret_value()
        headers = {
            "X-Twilio-Signature": RequestValidator(token).compute_signature(ws_url, {})
        }  # Twilio signs the wss:// URL
        stream_sid = "MZ" + uuid.uuid4().hex
        async with connect(self._local(ws_url), additional_headers=headers, proxy=None, compression=None) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(
                json.dumps(
                    {
                        "event": "start",
                        "sequenceNumber": "1",
                        "streamSid": stream_sid,
                        "start": {
                            "streamSid": stream_sid,
                            "accountSid": self.settings.account_sid,
                            "callSid": self.call_id,
                            "tracks": ["inbound"],
                            "customParameters": parameters,
                            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                        },
                    }
                )
            )
            reader = asyncio.create_task(self._read_twilio(ws, result))

            async def send(frame: bytes) -> None:
                await ws.send(
                    json.dumps(
                        {
                            "event": "media",
                            "streamSid": stream_sid,
                            "media": {
                                "track": "inbound",
                                "chunk": str(result.frames_sent + 1),
                                "timestamp": str(result.frames_sent * 20),
                                "payload": base64.b64encode(frame).decode(),
                            },
                        }
                    )
                )

            await self._pace(send, result)
            await ws.send(json.dumps({"event": "stop", "streamSid": stream_sid, "stop": {"callSid": self.call_id}}))
            await asyncio.sleep(0.2)
            reader.cancel()

    async def _vonage_media(
        self, uri: str, content_type: str, headers: dict[str, Any], result: SimulationResult
    ) -> None:
        async with connect(self._local(uri), proxy=None, compression=None) as ws:
            await ws.send(json.dumps({"event": "websocket:connected", "content-type": content_type, **headers}))
            reader = asyncio.create_task(self._read_vonage(ws, result))
            await self._pace(ws.send, result)
            reader.cancel()

    async def _pace(self, send: Any, result: SimulationResult) -> None:
        """Send the audio in 20 ms frames in real time, then wait for the agent's last words."""
        started = time.monotonic()
        for index in range(0, len(self.audio) - self.frame_bytes + 1, self.frame_bytes):
            await send(self.audio[index : index + self.frame_bytes])
            result.frames_sent += 1
            await asyncio.sleep(max(0.0, started + result.frames_sent * 0.02 - time.monotonic()))
        await asyncio.sleep(0.5)

    def _local(self, ws_url: str) -> str:
        """The gateway's own address for a WebSocket URL handed out under its public host."""
        if "/api/" not in ws_url:
            raise SimulationError(f"the media URL {ws_url!r} is not one of this gateway's")
        return self.base.replace("http", "ws", 1) + "/api/" + ws_url.split("/api/", 1)[1]

    async def _read_twilio(self, ws: Any, result: SimulationResult) -> None:
        async for message in ws:
            data = json.loads(message)
            if data.get("event") == "media":
                result.frames_received += 1
                result.agent_audio += base64.b64decode(data["media"]["payload"])
            elif data.get("event") == "mark":
                result.marks.append(data["mark"]["name"])
                await ws.send(json.dumps({"event": "mark", "streamSid": data["streamSid"], "mark": data["mark"]}))
            elif data.get("event") == "clear":
                result.clears += 1

    async def _read_vonage(self, ws: Any, result: SimulationResult) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                result.frames_received += 1
                result.agent_audio += message

    async def _collect(self, client: httpx.AsyncClient, result: SimulationResult, wait: float = 5.0) -> None:
        """The call record and its deliveries, once none is pending (or after `wait` seconds)."""
        if self.config.api_key is None:
            return
        headers = {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"}
        deadline = time.monotonic() + wait
        while True:
            await asyncio.sleep(0.25)
            deliveries = await client.get(
                f"{self.base}/api/v1/deliveries", params={"run": self.run_id}, headers=headers
            )
            if deliveries.status_code == 200:
                result.deliveries = deliveries.json()["deliveries"]
            if time.monotonic() > deadline or all(d["status"] != "pending" for d in result.deliveries):
                break
        call = await client.get(f"{self.base}/api/v1/calls/{self.run_id}", headers=headers)
        if call.status_code == 200:
            result.call = call.json()


def _detail(response: httpx.Response) -> str:
    """A problem+json answer's `detail`, else the start of the body."""
    try:
        return str(response.json().get("detail") or response.text[:300])
    except (ValueError, AttributeError):
        return response.text[:300] or "(no body)"


async def create_run(config: GatewayConfig, run_id: str, plan: CallPlan) -> None:
    """Write the run with its initial context into the gateway's store, as `POST /api/v1/calls`
    does before it dials (the call is played, not dialed, so the provider's REST API is not used)."""
    from gateway.calls.lifecycle import CallUpdate
    from gateway.calls.states import CallState
    from gateway.events.fanout import fanout_for
    from gateway.store import StoreError, open_store_for
    from gateway.store.base import CallSeed

    store = open_store_for(config.store, writer_process=False)
    store.set_fanout(fanout_for(config.webhooks))
    try:
        await store.open()
        seed = CallSeed(
            workflow_id=plan.workflow_id,
            user_id=plan.user_id,
            provider=plan.provider,
            direction="outbound",
            from_number=plan.from_,
            to_number=plan.to,
            initial_context=dict(plan.initial_context),
        )
        await store.apply_update(
            CallUpdate(
                provider=plan.provider,
                kind="dial",
                state=CallState.INITIATED,
                raw_status="dialing",
                params={"to": plan.to, "from": plan.from_},
            ),
            run_id=run_id,
            seed=seed,
        )
    except (StoreError, OSError) as exc:
        raise SimulationError(
            f"--initial-context: cannot write the run into the gateway's store {redact_url(config.store)}: {exc}"
        ) from None
    finally:
        await store.close()


# -- Telnyx (TeXML) ----------------------------------------------------------------------------


async def _send_paced(sim: ProviderSimulator, result: SimulationResult, ws: Any, message: Any) -> None:
    """Send the audio in real time, one frame each 20 ms; `message(n, frame)` is the n-th frame's text."""
    started = time.monotonic()
    for index in range(0, len(sim.audio) - sim.frame_bytes + 1, sim.frame_bytes):
        result.frames_sent += 1
        await ws.send(message(result.frames_sent, sim.audio[index : index + sim.frame_bytes]))
        await asyncio.sleep(max(0.0, started + result.frames_sent * 0.02 - time.monotonic()))


def _telnyx_post(sim: ProviderSimulator, path: str, params: dict[str, str]) -> httpx.Request:
    """A form POST signed as Telnyx signs: Ed25519 over `timestamp|body`."""
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if sim.config.providers.telnyx is None:
        raise SimulationError("providers.telnyx is not configured in this gateway's config")
    seed = os.environ.get(TELNYX_KEY_ENV) or _dev_telnyx_key(sim.config)
    if not seed:
        raise SimulationError(
            f"set {TELNYX_KEY_ENV} to the base64 private key whose public half is providers.telnyx.public_key"
        )
    try:
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed, validate=True))
    except ValueError:
        raise SimulationError(f"{TELNYX_KEY_ENV} is not a base64 32-byte Ed25519 private key") from None
    body = httpx.QueryParams(params).__str__().encode()
    stamp = str(int(time.time()))
    signature = base64.b64encode(key.sign(stamp.encode() + b"|" + body)).decode()
    return httpx.Request(
        "POST",
        sim.base + path,
        content=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "telnyx-signature-ed25519": signature,
            "telnyx-timestamp": stamp,
        },
    )


def _dev_telnyx_key(config: GatewayConfig) -> str | None:
    """The development Telnyx private key, when the gateway checks with its public half (no config file)."""
    from gateway.dev_secrets import DevSecrets, dev_secrets_path, telnyx_public_key

    stored = DevSecrets.read(dev_secrets_path(config)) if config.providers.telnyx is not None else None
    seed = stored.values.get("telnyx_private_key") if stored is not None else None
    if seed and config.providers.telnyx is not None and telnyx_public_key(seed) == config.providers.telnyx.public_key:
        return seed
    return None


def _telnyx_params(sim: ProviderSimulator, status: str, **extra: str) -> dict[str, str]:
    sim.sequence += 1
    return {
        "CallSid": sim.call_id,
        "AccountSid": "simulated",
        "From": sim.plan.from_,
        "To": sim.plan.to,
        "CallStatus": status,
        "Direction": "outbound",
        "SequenceNumber": str(sim.sequence),
        **extra,
    }


async def telnyx_status(sim: ProviderSimulator, client: httpx.AsyncClient, path: str, status: str) -> None:
    extra = {"CallDuration": str(int(len(sim.audio) / 8000))} if status == "completed" else {}
    response = await client.send(_telnyx_post(sim, path, _telnyx_params(sim, status, **extra)))
    if response.status_code >= 300:
        raise SimulationError(f"status callback {status!r} answered {response.status_code}: {response.text[:300]}")


async def run_telnyx(sim: ProviderSimulator, client: httpx.AsyncClient, webhook: str, result: SimulationResult) -> None:
    """Telnyx's side of a call: TeXML fetch, `<Connect><Stream>` media, status callbacks."""
    await sim._status(client, "initiated")
    await sim._status(client, "ringing")
    answer = await client.send(_telnyx_post(sim, webhook, _telnyx_params(sim, "in-progress")))
    if answer.status_code != 200:
        raise SimulationError(f"TeXML webhook answered {answer.status_code}: {answer.text[:300]}")
    stream = ET.fromstring(answer.text).find("./Connect/Stream")
    if stream is None:
        raise SimulationError("the TeXML has no <Connect><Stream>")
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    await sim._status(client, "in-progress")
    stream_id = str(uuid.uuid4())
    codec = stream.get("codec") or "PCMU"
    if codec == "PCMA":  # the stream's codec, as Telnyx would send it
        sim.audio = Transcoder(TELNYX_FORMAT, AudioFormat("alaw", 8000)).process(sim.audio)
    async with connect(sim._local(stream.get("url") or ""), proxy=None, compression=None) as ws:
        await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        await ws.send(
            json.dumps(
                {
                    "event": "start",
                    "sequence_number": "1",
                    "stream_id": stream_id,
                    "start": {
                        "call_control_id": sim.call_id,
                        "from": sim.plan.from_,
                        "to": sim.plan.to,
                        "custom_parameters": parameters,
                        "media_format": {"encoding": codec, "sample_rate": 8000, "channels": 1},
                    },
                }
            )
        )
        reader = asyncio.create_task(_read_telnyx(ws, result))
        await _send_paced(
            sim,
            result,
            ws,
            lambda n, frame: json.dumps(
                {
                    "event": "media",
                    "sequence_number": str(n + 1),
                    "stream_id": stream_id,
                    "media": {
                        "track": "inbound",
                        "chunk": str(n),
                        "timestamp": str(n * 20),
                        "payload": base64.b64encode(frame).decode(),
                    },
                }
            ),
        )
        await asyncio.sleep(0.5)
        await ws.send(json.dumps({"event": "stop", "stream_id": stream_id, "stop": {"call_control_id": sim.call_id}}))
        await asyncio.sleep(0.2)
        reader.cancel()
    await sim._status(client, "completed")


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
    return {
        "CallUUID": sim.call_id,
        "From": sim.plan.from_.lstrip("+"),
        "To": sim.plan.to.lstrip("+"),
        "CallStatus": status,
        "Direction": "outbound",
        **extra,
    }


async def plivo_status(sim: ProviderSimulator, client: httpx.AsyncClient, path: str, status: str) -> None:
    if status in PLIVO_HANGUPS:  # the hangup URL, with the call's length when it was answered
        extra = {"Event": "Hangup", "Duration": str(int(len(sim.audio) / 8000)) if status == "completed" else "0"}
    else:
        extra = {"Event": "Ring"}
    response = await client.send(_plivo_post(sim, path, _plivo_params(sim, status, **extra)))
    if response.status_code >= 300:
        raise SimulationError(f"status callback {status!r} answered {response.status_code}: {response.text[:300]}")


async def run_plivo(sim: ProviderSimulator, client: httpx.AsyncClient, webhook: str, result: SimulationResult) -> None:
    """Plivo's side of a call: ring, answer XML, a signed bidirectional `<Stream>`, hangup."""
    await sim._status(client, "ringing")
    answer = await client.send(_plivo_post(sim, webhook, _plivo_params(sim, "in-progress", Event="StartApp")))
    if answer.status_code != 200:
        raise SimulationError(f"answer URL answered {answer.status_code}: {answer.text[:300]}")
    stream = ET.fromstring(answer.text).find("./Stream")
    if stream is None or not stream.text:
        raise SimulationError("the answer XML has no <Stream>")
    stream_id = str(uuid.uuid4())
    headers = _plivo_signed(sim, "GET", stream.text, {})  # Plivo signs the upgrade too
    async with connect(sim._local(stream.text), additional_headers=headers, proxy=None, compression=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": 1,
                    "extra_headers": stream.get("extraHeaders", ""),
                    "start": {
                        "callId": sim.call_id,
                        "streamId": stream_id,
                        "accountId": "simulated",
                        "tracks": ["inbound"],
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
                    },
                }
            )
        )
        reader = asyncio.create_task(_read_plivo(ws, result))
        await _send_paced(
            sim,
            result,
            ws,
            lambda n, frame: json.dumps(
                {
                    "event": "media",
                    "sequenceNumber": n + 1,
                    "streamId": stream_id,
                    "media": {
                        "track": "inbound",
                        "timestamp": str(int(time.time() * 1000)),
                        "chunk": n,
                        "payload": base64.b64encode(frame).decode(),
                    },
                }
            ),
        )
        await asyncio.sleep(0.5)
        reader.cancel()
    await sim._status(client, "completed")


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
    from gateway.commands.inspect import delivery_line, timeline_line

    call = result.call
    lines = [
        f"call {result.run_id}: state={call.get('state', '?')} duration={call.get('duration')}"
        + (" voicemail" if call.get("voicemail") else ""),
        f"audio: sent {result.frames_sent} frames ({result.frames_sent * 0.02:.1f} s); "
        f"the agent sent back {result.frames_received} frames ({result.agent_audio_seconds:.1f} s)"
        + (f", marks {result.marks}" if result.marks else "")
        + (f", {result.clears} clears" if result.clears else ""),
    ]
    for name in ("initial_context", "gathered_context"):
        if call.get(name):
            lines.append(f"{name}: {json.dumps(call[name], sort_keys=True)}")
    lines.append("timeline:")
    lines += ["  " + timeline_line(entry) for entry in call.get("timeline", [])]
    lines.append(f"deliveries ({len(result.deliveries)}):")
    lines += ["  " + delivery_line(delivery) for delivery in result.deliveries]
    if not result.deliveries:
        lines.append("  none (no webhooks configured, or none matched)")
    return "\n".join(lines)


async def wait_until_ready(client: httpx.AsyncClient, base_url: str, wait: float) -> None:
    """Poll `/readyz` until the gateway answers 200, for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            ready = await client.get(base_url.rstrip("/") + "/readyz", timeout=2)
            if ready.status_code == 200:
                return
            problem = f"it answers /readyz with {ready.status_code}"
        except httpx.TransportError as exc:
            problem = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise SimulationError(
                f"cannot reach the gateway at {base_url} ({problem}); is it running? "
                "Start it with `make run` (or pass --url)"
            )
        await asyncio.sleep(0.25)


async def simulate(config: GatewayConfig, base_url: str, plan: CallPlan, *, wait: float = 10.0) -> SimulationResult:
    """Play one call; every failure becomes a one-line `SimulationError`."""
    async with httpx.AsyncClient(timeout=15, trust_env=False) as client:
        await wait_until_ready(client, base_url, wait)
        try:
            return await ProviderSimulator(config, base_url, plan).run(client)
        except httpx.TransportError as exc:
            raise SimulationError(f"lost the gateway at {base_url}: {exc or type(exc).__name__}") from None
        except InvalidStatus as exc:
            raise SimulationError(f"the media WebSocket was refused with HTTP {exc.response.status_code}") from None
        except (WebSocketException, OSError) as exc:
            raise SimulationError(f"the media WebSocket failed: {exc or type(exc).__name__}") from None
