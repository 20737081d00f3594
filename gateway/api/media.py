"""The media WebSocket: verify the upgrade and the stream token, then run the session.

Twilio signs the upgrade (`X-Twilio-Signature` over the `wss://` URL) and carries the stream
token in `start.customParameters`; Vonage carries it in the `websocket:connected` message's
headers (and signs the upgrade with a JWT when the NCCO asks it to); Telnyx (unsigned
upgrade) in `start.custom_parameters`; Plivo (upgrade signed with X-Plivo-Signature-V3) in
`start`'s `extra_headers`. A socket without a valid token is closed before any audio is read.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.api.context import GatewayContext
from gateway.api.middleware import POLICY_VIOLATION
from gateway.api.recordings import media_link
from gateway.api.telephony import _PATH_ID, WS_PATH
from gateway.api.urls import called_url, gateway_origin
from gateway.audio import AudioFormat
from gateway.calls.record import CallRecord
from gateway.logs import RUN_ID
from gateway.media.agent import agent_link_for
from gateway.media.provider_socket import (
    HandshakeError,
    PlivoSocket,
    ProviderSocket,
    StreamStart,
    TelnyxSocket,
    TwilioSocket,
    VonageSocket,
)
from gateway.media.provider_socket import (
    Receive as SocketReceive,
)
from gateway.media.provider_socket import (
    Send as SocketSend,
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


async def _upgrade_refusal(ws: WebSocket, ctx: GatewayContext) -> tuple[str | None, str]:
    """(refusal reason or None, provider name) for the upgrade request."""
    for name in ("workflow_id", "user_id", "workflow_run_id"):
        if not _PATH_ID.match(ws.path_params[name]):
            return f"{name} is not a valid id", "?"
    signature = ws.headers.get("x-twilio-signature")
    if signature is not None:
        settings = ctx.config.providers.twilio
        if settings is None:
            return "twilio is not configured on this gateway", "twilio"
        url = called_url(ws, gateway_origin(ws, ctx))
        verdict = twilio.verify_twilio_signature(settings.auth_token.get_secret_value(), url, {}, b"", signature)
        if not verdict.ok:
            log.warning(
                "refused twilio media upgrade %s: %s (signature checked over %s)",
                ws.url.path,
                verdict.reason,
                verdict.signed_url or url,
            )
            return f"twilio signature check failed: {verdict.reason}", "twilio"
        return None, "twilio"
    plivo_signatures = [ws.headers.get(plivo.SIGNATURE_HEADER), ws.headers.get(plivo.MAIN_SIGNATURE_HEADER)]
    if any(plivo_signatures):
        settings = ctx.config.providers.plivo
        if settings is None:
            return "plivo is not configured on this gateway", "plivo"
        url = called_url(ws, gateway_origin(ws, ctx))
        # Plivo signs the upgrade as a GET; whether over the wss:// or the https:// spelling
        # of the URL is not documented (its stream SDK rebuilds an https:// one): both count.
        urls = [url, "https" + url[3:] if url.startswith("wss") else "http" + url[2:]]
        verdict = plivo.verify_plivo_signature(
            settings.auth_token.get_secret_value(),
            "GET",
            urls,
            None,
            plivo_signatures,
            ws.headers.get(plivo.NONCE_HEADER),
        )
        if not verdict.ok:
            log.warning(
                "refused plivo media upgrade %s: %s (signature checked over %s)",
                ws.url.path,
                verdict.reason,
                verdict.signed_url,
            )
            return f"plivo signature check failed: {verdict.reason}", "plivo"
        return None, "plivo"
    authorization = ws.headers.get("authorization")
    if authorization is not None:
        settings = ctx.config.providers.vonage
        if settings is None:
            return "vonage is not configured on this gateway", "vonage"
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
                return "the gateway could not check the token for replay", "vonage"
        if not verdict.ok:
            log.warning("refused vonage media upgrade %s: %s", ws.url.path, verdict.reason)
            return f"vonage signature check failed: {verdict.reason}", "vonage"
        return None, "vonage"
    return None, UNSIGNED


UNSIGNED = "unsigned"  # Telnyx, and Vonage or Plivo without a signed upgrade: told apart by the first message
_SOCKETS: dict[str, type[ProviderSocket]] = {"twilio": TwilioSocket, "vonage": VonageSocket, "telnyx": TelnyxSocket}


async def _sniff(receive: SocketReceive) -> tuple[str, SocketReceive]:
    """(provider, a receive that hands back the first message first) for an unsigned socket.

    Vonage opens with `websocket:connected`; Plivo with a `start` naming its `streamId`;
    Telnyx with `connected` then `start`. None is trusted for it: the stream token in the
    opening messages is what admits the socket."""
    first = await receive()
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

    async def replay() -> dict[str, object]:
        return pending.pop() if pending else await receive()

    return provider, replay  # type: ignore[return-value]


def _provider_socket(name: str, receive: SocketReceive, send: SocketSend, ws: WebSocket) -> ProviderSocket:
    if name == "plivo":
        return PlivoSocket(receive, send, upgrade_headers=dict(ws.headers))
    return _SOCKETS[name](receive, send)


async def _sniffed_socket(
    ws: WebSocket, receive: SocketReceive, send: SocketSend, seconds: float
) -> tuple[str, ProviderSocket]:
    """(provider, its socket) for an unsigned upgrade, told by its first message within `seconds`."""
    try:
        name, replay = await asyncio.wait_for(_sniff(receive), seconds)
    except TimeoutError:
        raise HandshakeError(f"no stream token within {seconds:g} s") from None
    return name, _provider_socket(name, replay, send, ws)


async def _handshake(
    ctx: GatewayContext, provider: ProviderSocket, path: dict[str, str], seconds: float
) -> tuple[StreamStart, CallRecord]:
    """The stream's start, its token checked against the path's ids, and its call (not ended).
    `HandshakeError` when the opening messages have not come in `seconds` (a socket that never
    presents a token would otherwise stay open, uncounted)."""
    run_id = path["workflow_run_id"]
    try:
        start = await asyncio.wait_for(provider.handshake(), seconds)
    except TimeoutError:
        raise HandshakeError(f"no stream token within {seconds:g} s") from None
    problem = check_stream_token(
        ctx.secret_key, run_id, start.token, now=ctx.clock(), workflow_id=path["workflow_id"], user_id=path["user_id"]
    )
    if problem is not None:
        raise HandshakeError(problem)
    record = await ctx.store.get_call(run_id)
    if record is None:
        raise HandshakeError("no such call")
    if record.state.terminal:
        raise HandshakeError(f"the call has ended ({record.state.value})")
    return start, record


async def _claim(
    ctx: GatewayContext, record: CallRecord, session_id: str, start: StreamStart, provider_name: str
) -> None:
    """Make `session_id` the owner of the call's media in the store (the store refuses a call
    that has ended meanwhile: `HandshakeError`). A session it replaces on another instance is
    told to end; one on this instance is ended when the new one is registered."""
    run_id = record.workflow_run_id
    previous = record.media.get("session")
    try:
        await ctx.store.record_activity(
            run_id,
            source="gateway",
            kind=MEDIA_CONNECTED,
            session=session_id,
            data={
                "stream_id": start.stream_id,
                "provider": provider_name,
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


async def media_socket(ws: WebSocket, receive: Receive | None = None, send: Send | None = None) -> None:
    """`WS /api/v1/telephony/ws/{workflow_id}/{user_id}/{workflow_run_id}`.

    `receive`/`send`: the connection's raw ASGI callables, which the audio path uses instead
    of Starlette's per-message wrapper (see `MediaEndpoint`). One media session per call: a
    socket that opens while the call has one replaces it (a provider's reconnect); a call in a
    terminal state gets none.
    """
    ctx: GatewayContext = ws.app.state.gateway
    refusal, provider_name = await _upgrade_refusal(ws, ctx)
    if refusal is not None:
        await ws.close(code=POLICY_VIOLATION, reason=refusal[:120])
        return
    run_id = ws.path_params["workflow_run_id"]
    limits = ctx.config.limits
    if MEDIA.active + ctx.unverified_sockets >= limits.max_media_sessions:
        REFUSALS.labels("max_media_sessions").inc()
        log.warning("refused media socket run=%s: %d live sessions is the limit", run_id[:64], MEDIA.active)
        await ws.close(code=1013, reason="too many live media sessions")
        return
    if ctx.unverified_sockets >= limits.max_unverified_media_sockets:
        REFUSALS.labels("max_unverified_media_sockets").inc()
        log.warning(
            "refused media socket run=%s: %d sockets without a stream token yet is the limit",
            run_id[:64],
            ctx.unverified_sockets,
        )
        await ws.close(code=1013, reason="too many media sockets without a stream token")
        return
    RUN_ID.set(run_id)
    socket_receive: SocketReceive = receive or ws.receive
    socket_send: SocketSend = send or ws.send
    provider: ProviderSocket | None = (
        None if provider_name == UNSIGNED else _provider_socket(provider_name, socket_receive, socket_send, ws)
    )
    session_id = uuid.uuid4().hex
    ctx.unverified_sockets += 1  # until the token is checked: bounded, and closed after media_token_seconds
    try:
        await ws.accept()
        try:
            if provider is None:  # Telnyx, or Vonage/Plivo unsigned: told by the first message
                provider_name, provider = await _sniffed_socket(
                    ws, socket_receive, socket_send, limits.media_token_seconds
                )
            start, record = await _handshake(ctx, provider, ws.path_params, limits.media_token_seconds)
        finally:
            ctx.unverified_sockets -= 1
        ctx.live_calls.note(record)
        async with ctx.sessions.claiming(run_id):  # of two sockets of a call, the store's owner is the one registered
            await _claim(ctx, record, session_id, start, provider_name)
            session = _session(ws, ctx, record, provider, session_id)
            ctx.sessions.add(run_id, session)  # ends the session it replaces
    except HandshakeError as exc:
        log.warning("closed %s media socket run=%s before audio: %s", provider_name, run_id[:64], exc.reason)
        if provider is None or not provider.peer_closed:
            await ws.close(code=exc.code, reason=exc.reason[:120])
        return
    agent = ctx.config.agent
    dial = getattr(ws.app.state, "dial", None)
    log.info(
        "media started run=%s provider=%s stream=%s agent=%s",
        run_id,
        provider_name,
        provider.stream_id,
        redact_url(agent.url),
    )
    MEDIA.add(session.counters)
    try:
        await session.run(start.parameters)
        if session.agent is None and agent.on_failure == "hangup" and dial is not None:
            dial.dialer.hang_up_soon(run_id, reason="agent unavailable", source="agent")  # deduplicated
    finally:
        ctx.sessions.remove(run_id, session)
        MEDIA.remove(session.counters)
        if not provider.peer_closed:
            try:
                await ws.close(code=1000)
            except (RuntimeError, OSError):  # the provider left meanwhile
                pass


def _session(
    ws: WebSocket, ctx: GatewayContext, record: CallRecord, provider: ProviderSocket, session_id: str
) -> MediaSession:
    """The call's media session, with its agent, recorder, links and hang-up."""
    run_id = record.workflow_run_id
    agent = ctx.config.agent
    origin = gateway_origin(ws, ctx)
    recording = recording_enabled(ctx.config.recording, record.workflow_id)

    def links() -> dict[str, str]:
        now = ctx.clock()
        out = {"transcript_url": media_link(origin, ctx.secret_key, "transcript", run_id, now=now)}
        if recording:
            out["recording_url"] = media_link(origin, ctx.secret_key, "recording", run_id, now=now)
        return out

    dial = getattr(ws.app.state, "dial", None)

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
        session_id=session_id,
    )
    return session


class MediaEndpoint:
    """The route's ASGI app: Starlette's `WebSocket` for the upgrade checks, the raw callables for audio."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await media_socket(WebSocket(scope, receive, send), receive, send)


routes = [WebSocketRoute(WS_PATH, MediaEndpoint())]
