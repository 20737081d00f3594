"""The media WebSocket on Starlette: the fallback when the lean layer (`gateway.media.ws_edge`)
does not serve the socket (an app served without the gateway's HTTP protocol, e.g. in-thread
test servers). Everything a media socket checks is in `gateway.media.entry.MediaEntry`.
"""

from __future__ import annotations

import contextlib

from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.api.context import GatewayContext
from gateway.api.telephony import WS_PATH
from gateway.media.entry import MediaEntry
from gateway.media.provider_socket import HandshakeError


async def media_socket(ws: WebSocket, receive: Receive | None = None, send: Send | None = None) -> None:
    """`WS /api/v1/telephony/ws/{workflow_id}/{user_id}/{workflow_run_id}`.

    `receive`/`send`: the connection's raw ASGI callables, which the audio path uses instead
    of Starlette's per-message wrapper (see `MediaEndpoint`). One media session per call: a
    socket that opens while the call has one replaces it (a provider's reconnect); a call in a
    terminal state gets none.
    """
    ctx: GatewayContext = ws.app.state.gateway
    entry = MediaEntry(ctx, getattr(ws.app.state, "dial", None), ws.scope, ws.path_params)
    refusal = await entry.check_upgrade()
    if refusal is not None:
        await ws.close(code=refusal.code, reason=refusal.reason)
        return
    try:
        try:
            await ws.accept()
        except BaseException:
            entry.release()
            raise
        session, start = await entry.open(receive or ws.receive, send or ws.send)
    except HandshakeError as exc:
        entry.refused_before_audio(exc)
        if not entry.peer_closed:
            await ws.close(code=exc.code, reason=exc.reason[:120])
        return
    try:
        await entry.run(session, start)
    finally:
        if not entry.peer_closed:
            with contextlib.suppress(RuntimeError, OSError):  # the provider left meanwhile
                await ws.close(code=1000)


class MediaEndpoint:
    """The route's ASGI app: Starlette's `WebSocket` for the upgrade checks, the raw callables for audio."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await media_socket(WebSocket(scope, receive, send), receive, send)


routes = [WebSocketRoute(WS_PATH, MediaEndpoint())]
