"""The media WebSocket: verify the upgrade and the stream token, then run the session.

Twilio signs the upgrade (`X-Twilio-Signature` over the `wss://` URL) and carries the stream
token in `start.customParameters`; Vonage carries it in the `websocket:connected` message's
headers (and signs the upgrade with a JWT when the NCCO asks it to); Telnyx (unsigned
upgrade) in `start.custom_parameters`; Plivo (upgrade signed with X-Plivo-Signature-V3) in
`start`'s `extra_headers`. A socket without a valid token is closed before any audio is read.
"""

from __future__ import annotations

import logging

from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.api.context import GatewayContext
from gateway.logs import RUN_ID
from gateway.metrics import MEDIA, REFUSALS
from gateway.api.recordings import media_link
from gateway.api.telephony import _PATH_ID, WS_PATH
from gateway.api.urls import called_url, gateway_origin
from gateway.audio import AudioFormat
from gateway.media.agent import agent_link_for
from gateway.media.provider_socket import (
    HandshakeError,
    PlivoSocket,
    ProviderSocket,
    Receive as SocketReceive,
    TelnyxSocket,
    TwilioSocket,
    VonageSocket,
)
from gateway.media.recording import CallRecorder, recording_enabled, recording_path
from gateway.media.session import MediaSession, SessionOptions
from gateway.media.token import check_stream_token
from gateway.providers import plivo, twilio, vonage

log = logging.getLogger("gateway.media")

POLICY_VIOLATION = 1008


def _upgrade_refusal(ws: WebSocket, ctx: GatewayContext) -> tuple[str | None, str]:
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
            log.warning("refused twilio media upgrade %s: %s (signature checked over %s)", ws.url.path, verdict.reason, verdict.signed_url or url)
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
        verdict = plivo.verify_plivo_signature(settings.auth_token.get_secret_value(), "GET", urls, None,
                                               plivo_signatures, ws.headers.get(plivo.NONCE_HEADER))
        if not verdict.ok:
            log.warning("refused plivo media upgrade %s: %s (signature checked over %s)", ws.url.path, verdict.reason, verdict.signed_url)
            return f"plivo signature check failed: {verdict.reason}", "plivo"
        return None, "plivo"
    authorization = ws.headers.get("authorization")
    if authorization is not None:
        settings = ctx.config.providers.vonage
        if settings is None:
            return "vonage is not configured on this gateway", "vonage"
        verdict = vonage.verify_vonage_jwt(
            authorization, settings.signature_secret.get_secret_value(), b"", now=ctx.clock(), replay=ctx.replay_guard,
            window_seconds=settings.jwt_window, api_key=settings.api_key, application_id=settings.application_id,
        )
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


async def media_socket(ws: WebSocket, receive: Receive | None = None, send: Send | None = None) -> None:
    """`WS /api/v1/telephony/ws/{workflow_id}/{user_id}/{workflow_run_id}`.

    `receive`/`send`: the connection's raw ASGI callables, which the audio path uses instead
    of Starlette's per-message wrapper (see `MediaEndpoint`).
    """
    ctx: GatewayContext = ws.app.state.gateway
    refusal, provider_name = _upgrade_refusal(ws, ctx)
    if refusal is not None:
        await ws.close(code=POLICY_VIOLATION, reason=refusal[:120])
        return
    run_id = ws.path_params["workflow_run_id"]
    if MEDIA.active >= ctx.config.limits.max_media_sessions:
        REFUSALS.labels("max_media_sessions").inc()
        log.warning("refused media socket run=%s: %d live sessions is the limit", run_id[:64], MEDIA.active)
        await ws.close(code=1013, reason="too many live media sessions")
        return
    RUN_ID.set(run_id)
    await ws.accept()
    socket_receive: SocketReceive = receive or ws.receive
    if provider_name == UNSIGNED:
        provider_name, socket_receive = await _sniff(socket_receive)
    if provider_name == "plivo":
        provider: ProviderSocket = PlivoSocket(socket_receive, send or ws.send, upgrade_headers=dict(ws.headers))
    else:
        provider = _SOCKETS[provider_name](socket_receive, send or ws.send)
    try:
        start = await provider.handshake()
        problem = check_stream_token(ctx.secret_key, run_id, start.token, now=ctx.clock())
        if problem is not None:
            raise HandshakeError(problem)
        record = await ctx.store.get_call(run_id)
        if record is None:
            raise HandshakeError("no such call")
    except HandshakeError as exc:
        log.warning("closed %s media socket run=%s before audio: %s", provider_name, run_id[:64], exc.reason)
        if not provider.peer_closed:
            await ws.close(code=exc.code, reason=exc.reason[:120])
        return
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

    session = MediaSession(
        record=record,
        provider=provider,
        agent_factory=lambda: agent_link_for(agent.url, headers=agent.headers, connect_timeout=agent.connect_timeout),
        agent_format=AudioFormat(agent.audio.encoding, agent.audio.sample_rate),
        store=ctx.store,
        options=SessionOptions(on_agent_failure=agent.on_failure),
        recorder=CallRecorder(recording_path(ctx.config.data_dir, run_id), provider.audio_format) if recording else None,
        links=links,
        on_hangup=hang_up,
    )
    log.info("media started run=%s provider=%s stream=%s agent=%s", run_id, provider_name, provider.stream_id, agent.url)
    MEDIA.add(session.counters)
    ctx.sessions.add(run_id, session)
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


class MediaEndpoint:
    """The route's ASGI app: Starlette's `WebSocket` for the upgrade checks, the raw callables for audio."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await media_socket(WebSocket(scope, receive, send), receive, send)


routes = [WebSocketRoute(WS_PATH, MediaEndpoint())]
