"""A media socket's way in: from the upgrade request to a running session, whatever serves the socket.

Twilio signs the upgrade (`X-Twilio-Signature` over the `wss://` URL) and carries the stream
token in `start.customParameters`; Vonage carries it in the `websocket:connected` message's
headers (and signs the upgrade with a JWT when the NCCO asks it to); Telnyx (unsigned
upgrade) in `start.custom_parameters`; Plivo (upgrade signed with X-Plivo-Signature-V3) in
`start`'s `extra_headers`. A socket without a valid token is closed before any audio is read.

`MediaEntry` is the one place that does this, for the lean WebSocket layer
(`gateway.media.ws_edge`) and for the Starlette route (`gateway.api.media`) alike:
`check_upgrade` (before the upgrade is answered: path ids, signature or JWT and its replay
claim, the socket limits) -> `open` (after: the provider told by its first message when the
upgrade was unsigned, the stream token bound to the path's ids, the call, the claim in the
store, the session, registered) -> `run`. Each transport only moves bytes and closes with the
code it is told.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from starlette.requests import HTTPConnection
from starlette.types import Scope

from gateway.api.context import GatewayContext
from gateway.api.middleware import POLICY_VIOLATION
from gateway.api.recordings import media_link
from gateway.api.scope import headers_of
from gateway.api.telephony import _PATH_ID
from gateway.api.urls import called_url, gateway_origin
from gateway.audio import AudioFormat
from gateway.calls.record import CallRecord
from gateway.logs import RUN_ID
from gateway.media.agent import agent_link_for
from gateway.media.provider_socket import (
    HandshakeError,
    Message,
    PlivoSocket,
    ProviderSocket,
    PushWire,
    Receive,
    Send,
    StreamStart,
    TelnyxSocket,
    TwilioSocket,
    VonageSocket,
)
from gateway.media.recording import CallRecorder, recording_enabled, recording_path
from gateway.media.registry import INSTANCE_ID
from gateway.media.session import MediaSession, SessionOptions
from gateway.media.token import check_stream_token
from gateway.metrics import MEDIA, REFUSALS
from gateway.providers import plivo, twilio, vonage
from gateway.redact import redact_url
from gateway.store.activity import MEDIA_CONNECTED, CallEnded
from gateway.store.base import StoreError

log = logging.getLogger("gateway.media")

PATH_PARAMS = ("workflow_id", "user_id", "workflow_run_id")
UNSIGNED = "unsigned"  # Telnyx, and Vonage or Plivo without a signed upgrade: told apart by the first message
_SOCKETS: dict[str, type[ProviderSocket]] = {"twilio": TwilioSocket, "vonage": VonageSocket, "telnyx": TelnyxSocket}


@dataclass(frozen=True)
class Refusal:
    """An upgrade the gateway will not accept: close (or answer 403) with `code`."""

    code: int
    reason: str


class MediaEntry:
    """One media socket, from its upgrade request (an ASGI `websocket` scope and the path's ids)
    to its session's end. `dial` is the app's dial services (hang-ups), or None."""

    def __init__(self, ctx: GatewayContext, dial: Any, scope: Scope, path: Mapping[str, str]) -> None:
        self.ctx = ctx
        self.dial = dial
        self.scope = scope
        self.path = path
        self.run_id = path["workflow_run_id"]
        self.provider_name = "?"
        self.session_id = uuid.uuid4().hex
        self._counted = False  # in ctx.unverified_sockets
        self.provider: ProviderSocket | None = None  # once `open` knows which provider it is

    # -- before the upgrade is answered ---------------------------------------------------
    async def check_upgrade(self) -> Refusal | None:
        """None when the socket may be accepted (it is then counted as unverified until `open`)."""
        reason = await self._upgrade_refusal()
        if reason is not None:
            return Refusal(POLICY_VIOLATION, reason[:120])
        limits = self.ctx.config.limits
        if MEDIA.active + self.ctx.unverified_sockets >= limits.max_media_sessions:
            REFUSALS.labels("max_media_sessions").inc()
            log.warning("refused media socket run=%s: %d live sessions is the limit", self.run_id[:64], MEDIA.active)
            return Refusal(1013, "too many live media sessions")
        if self.ctx.unverified_sockets >= limits.max_unverified_media_sockets:
            REFUSALS.labels("max_unverified_media_sockets").inc()
            log.warning(
                "refused media socket run=%s: %d sockets without a stream token yet is the limit",
                self.run_id[:64],
                self.ctx.unverified_sockets,
            )
            return Refusal(1013, "too many media sockets without a stream token")
        self.ctx.unverified_sockets += 1  # until the token is checked: bounded, and closed after media_token_seconds
        self._counted = True
        return None

    async def _upgrade_refusal(self) -> str | None:
        """The refusal reason for the upgrade request, or None; sets `provider_name` (UNSIGNED:
        told by the first message, after the upgrade)."""
        for name in PATH_PARAMS:
            if not _PATH_ID.match(self.path[name]):
                return f"{name} is not a valid id"
        headers = headers_of(cast(dict[str, Any], self.scope))
        signature = headers.get("x-twilio-signature")
        if signature is not None:
            self.provider_name = "twilio"
            return self._twilio_refusal(signature)
        plivo_signatures = [headers.get(plivo.SIGNATURE_HEADER), headers.get(plivo.MAIN_SIGNATURE_HEADER)]
        if any(plivo_signatures):
            self.provider_name = "plivo"
            return self._plivo_refusal(plivo_signatures, headers.get(plivo.NONCE_HEADER))
        authorization = headers.get("authorization")
        if authorization is None:
            self.provider_name = UNSIGNED
            return None
        self.provider_name = "vonage"
        return await self._vonage_refusal(authorization)

    def _called_url(self) -> str:
        conn = HTTPConnection(self.scope)
        return called_url(conn, gateway_origin(conn, self.ctx))

    def _refused(self, reason: str, checked_over: str | None = None) -> str:
        """The one log line of a refused upgrade signature, and the refusal's reason."""
        where = f" (signature checked over {checked_over})" if checked_over else ""
        log.warning("refused %s media upgrade %s: %s%s", self.provider_name, self.scope.get("path", ""), reason, where)
        return f"{self.provider_name} signature check failed: {reason}"

    def _twilio_refusal(self, signature: str) -> str | None:
        settings = self.ctx.config.providers.twilio
        if settings is None:
            return "twilio is not configured on this gateway"
        url = self._called_url()
        verdict = twilio.verify_twilio_signature(settings.auth_token.get_secret_value(), url, {}, b"", signature)
        return None if verdict.ok else self._refused(verdict.reason, verdict.signed_url or url)

    def _plivo_refusal(self, signatures: list[str | None], nonce: str | None) -> str | None:
        settings = self.ctx.config.providers.plivo
        if settings is None:
            return "plivo is not configured on this gateway"
        url = self._called_url()
        # Plivo signs the upgrade as a GET; whether over the wss:// or the https:// spelling
        # of the URL is not documented (its stream SDK rebuilds an https:// one): both count.
        urls = [url, "https" + url[3:] if url.startswith("wss") else "http" + url[2:]]
        verdict = plivo.verify_plivo_signature(
            settings.auth_token.get_secret_value(), "GET", urls, None, signatures, nonce
        )
        return None if verdict.ok else self._refused(verdict.reason, verdict.signed_url)

    async def _vonage_refusal(self, authorization: str) -> str | None:
        ctx = self.ctx
        settings = ctx.config.providers.vonage
        if settings is None:
            return "vonage is not configured on this gateway"
        verdict = vonage.verify_vonage_jwt(
            authorization,
            settings.signature_secret.get_secret_value(),
            b"",
            now=ctx.clock(),
            replay=None,
            window_seconds=settings.jwt_window,
            api_key=settings.api_key,
            application_id=settings.application_id,
        )
        if verdict.ok:
            try:
                verdict = await ctx.unreplayed(verdict, settings.jwt_window)
            except StoreError as exc:
                log.error("could not check a vonage media upgrade for replay: %s", exc)
                return "the gateway could not check the token for replay"
        return None if verdict.ok else self._refused(verdict.reason)

    @property
    def peer_closed(self) -> bool:
        """True when the provider's side of the socket is known to be gone (nothing to close)."""
        return self.provider is not None and self.provider.peer_closed

    def _provider_socket(self, name: str, receive: Receive, send: Send, wire: PushWire | None) -> ProviderSocket:
        if name == "plivo":
            return PlivoSocket(
                receive, send, upgrade_headers=dict(headers_of(cast(dict[str, Any], self.scope))), wire=wire
            )
        return _SOCKETS[name](receive, send, wire=wire)

    async def _sniffed(self, receive: Receive, seconds: float) -> tuple[str, Receive]:
        """(provider, a receive that hands back the first message first) for an unsigned socket.

        Vonage opens with `websocket:connected`; Plivo with a `start` naming its `streamId`;
        Telnyx with `connected` then `start`. None is trusted for it: the stream token in the
        opening messages is what admits the socket."""
        try:
            first = await asyncio.wait_for(receive(), seconds)
        except TimeoutError:
            raise HandshakeError(f"no stream token within {seconds:g} s") from None
        text = first.get("text") or ""
        if '"websocket:connected"' in text:
            provider = "vonage"
        elif '"streamId"' in text:  # Plivo's start (camelCase); Telnyx's is stream_id
            provider = "plivo"
        else:
            provider = "telnyx"
        if first.get("type") == "websocket.disconnect" or first.get("bytes") is not None:
            provider = "vonage"
        pending = [first]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        return provider, replay

    # -- after: the stream token, the call, the session ----------------------------------
    async def open(
        self, receive: Receive, send: Send, wire: PushWire | None = None
    ) -> tuple[MediaSession, StreamStart]:
        """The call's registered session and the stream's start, over the accepted socket
        (`wire`: the lean layer's, for pushed messages and direct sends); `HandshakeError`
        (close with its code, unless `peer_closed`) when the token is missing, wrong or late,
        the call unknown or ended."""
        ctx = self.ctx
        RUN_ID.set(self.run_id)
        seconds = ctx.config.limits.media_token_seconds
        try:
            if self.provider_name == UNSIGNED:  # Telnyx, or Vonage/Plivo unsigned: told by the first message
                self.provider_name, receive = await self._sniffed(receive, seconds)
            provider = self.provider = self._provider_socket(self.provider_name, receive, send, wire)
            start, record = await self._handshake(provider, seconds)
        finally:
            self.release()
        ctx.live_calls.note(record)
        async with ctx.sessions.claiming(
            self.run_id
        ):  # of two sockets of a call, the store's owner is the one registered
            await self._claim(record, start)
            session = self._session(record, provider)
            ctx.sessions.add(self.run_id, session)  # ends the session it replaces
        return session, start

    def release(self) -> None:
        """Stop counting the socket as unverified (idempotent; for a socket gone before `open`)."""
        if self._counted:
            self._counted = False
            self.ctx.unverified_sockets -= 1

    async def _handshake(self, provider: ProviderSocket, seconds: float) -> tuple[StreamStart, CallRecord]:
        """The stream's start, its token checked against the path's ids, and its call (not ended).
        `HandshakeError` when the opening messages have not come in `seconds` (a socket that never
        presents a token would otherwise stay open, uncounted)."""
        ctx, path = self.ctx, self.path
        try:
            start = await asyncio.wait_for(provider.handshake(), seconds)
        except TimeoutError:
            raise HandshakeError(f"no stream token within {seconds:g} s") from None
        problem = check_stream_token(
            ctx.secret_key,
            self.run_id,
            start.token,
            now=ctx.clock(),
            workflow_id=path["workflow_id"],
            user_id=path["user_id"],
        )
        if problem is not None:
            raise HandshakeError(problem)
        record = await ctx.store.get_call(self.run_id)
        if record is None:
            raise HandshakeError("no such call")
        if record.state.terminal:
            raise HandshakeError(f"the call has ended ({record.state.value})")
        return start, record

    async def _claim(self, record: CallRecord, start: StreamStart) -> None:
        """Make this session the owner of the call's media in the store (the store refuses a call
        that has ended meanwhile: `HandshakeError`). A session it replaces on another instance is
        told to end; one on this instance is ended when the new one is registered."""
        ctx, run_id, session_id = self.ctx, record.workflow_run_id, self.session_id
        previous = record.media.get("session")
        try:
            await ctx.store.record_activity(
                run_id,
                source="gateway",
                kind=MEDIA_CONNECTED,
                session=session_id,
                data={
                    "stream_id": start.stream_id,
                    "provider": self.provider_name,
                    "instance": INSTANCE_ID,
                    "replaces": previous,
                },
                media={"instance": INSTANCE_ID},
            )
        except CallEnded as exc:
            raise HandshakeError(str(exc)) from None
        except StoreError as exc:
            raise HandshakeError(f"the gateway could not record the media session: {exc}", code=1011) from None
        if previous and not record.media.get("ended") and ctx.sessions.get(run_id) is None:
            await ctx.store.publish_control(run_id, "replaced", {"session": session_id})

    def _session(self, record: CallRecord, provider: ProviderSocket) -> MediaSession:
        """The call's media session, with its agent, recorder, links and hang-up."""
        ctx, run_id, dial = self.ctx, record.workflow_run_id, self.dial
        agent = ctx.config.agent
        origin = gateway_origin(HTTPConnection(self.scope), ctx)
        recording = recording_enabled(ctx.config.recording, record.workflow_id)

        def links() -> dict[str, str]:
            now = ctx.clock()
            out = {"transcript_url": media_link(origin, ctx.secret_key, "transcript", run_id, now=now)}
            if recording:
                out["recording_url"] = media_link(origin, ctx.secret_key, "recording", run_id, now=now)
            return out

        async def hang_up(reason: str) -> None:
            session.end(reason)
            if dial is not None:  # end the call at the provider too: no dead air until a timeout
                dial.dialer.hang_up_soon(run_id, reason=reason, source="agent")

        twilio_settings = ctx.config.providers.twilio  # a Twilio-speaking agent is told this account's sid
        session = MediaSession(
            record=record,
            provider=provider,
            agent_factory=lambda: agent_link_for(
                agent.url,
                headers=agent.headers,
                connect_timeout=agent.connect_timeout,
                protocol=agent.protocol,
                account_sid=twilio_settings.account_sid if twilio_settings else None,
            ),
            agent_format=AudioFormat(agent.audio.encoding, agent.audio.sample_rate),
            store=ctx.store,
            options=SessionOptions(
                on_agent_failure=agent.on_failure, transcode_batching=ctx.config.media.transcode_batching
            ),
            recorder=CallRecorder(recording_path(ctx.config.data_dir, run_id), provider.audio_format)
            if recording
            else None,
            links=links,
            on_hangup=hang_up,
            session_id=self.session_id,
        )
        return session

    def refused_before_audio(self, exc: HandshakeError) -> None:
        """The one log line of a socket closed between the upgrade and the session."""
        log.warning("closed %s media socket run=%s before audio: %s", self.provider_name, self.run_id[:64], exc.reason)

    # -- the session ----------------------------------------------------------------------
    async def run(self, session: MediaSession, start: StreamStart) -> None:
        """Carry the call's audio until the session ends; the caller then closes the socket."""
        agent = self.ctx.config.agent
        log.info(
            "media started run=%s provider=%s stream=%s agent=%s socket=%s",
            self.run_id,
            self.provider_name,
            session.provider.stream_id,
            redact_url(agent.url),
            "picows" if session.provider.lean else "asgi",
        )
        MEDIA.add(session.counters)
        try:
            await session.run(start.parameters)
            if session.agent is None and agent.on_failure == "hangup" and self.dial is not None:
                self.dial.dialer.hang_up_soon(self.run_id, reason="agent unavailable", source="agent")  # deduplicated
        finally:
            self.ctx.sessions.remove(self.run_id, session)
            MEDIA.remove(session.counters)
