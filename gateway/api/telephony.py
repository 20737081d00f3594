"""Provider-facing routes: the initial call webhook, inbound minting, status callbacks.

Every request is verified (Twilio HMAC over the URL it called, Vonage JWT, Telnyx Ed25519
over timestamp and body, Plivo V3 HMAC over URL, parameters and nonce) before anything reads
it; a refused request stores nothing. Paths are fixed by the product's documentation.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.api.body import BodyTooLarge, read_limited_body
from gateway.api.context import GatewayContext
from gateway.api.middleware import Handler, body_cut_short, note_request
from gateway.api.problems import problem
from gateway.api.scope import headers_of
from gateway.api.urls import as_websocket, called_url, gateway_origin
from gateway.calls.events import CALL_ENDED, STATE_EVENT
from gateway.calls.lifecycle import CallUpdate
from gateway.errors import ProblemError
from gateway.logs import RUN_ID
from gateway.media.token import mint_stream_token
from gateway.metrics import CALL_TRANSITIONS, PROVIDER_REQUESTS, SIGNATURE_FAILURES, labelled
from gateway.providers import PROVIDERS, plivo, telnyx, twilio, vonage
from gateway.providers.base import BadRequest, parse_form, parse_json_object
from gateway.store.base import AppliedUpdate, CallSeed, StoreError

log = logging.getLogger("gateway.telephony")

_PATH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~:@-]{0,127}$")
WS_PATH = "/api/v1/telephony/ws/{workflow_id}/{user_id}/{workflow_run_id}"
STATUS_PATH = "/api/v1/telephony/status-callback/{workflow_run_id}"


class Refusal(ProblemError):
    """A request the gateway will not take: an HTTP status and a reason naming the problem."""


@dataclass
class ProviderRequest:
    """A verified provider request: who sent it and its fields (form fields as lists; Vonage: JSON)."""

    provider: str
    fields: dict[str, Any]
    origin: str


def _context(request: Request) -> GatewayContext:
    ctx: GatewayContext = request.app.state.gateway
    return ctx


def _path_ids(request: Request, *names: str) -> list[str]:
    values = []
    for name in names:
        value = request.path_params[name]
        if not _PATH_ID.match(value):
            raise Refusal(400, f"{name} must be 1-128 characters of letters, digits and ._~:@-")
        values.append(value)
    return values


def _which_provider(request: Request) -> str:
    named = request.query_params.get("provider") if request.scope.get("query_string") else None
    if named is not None:
        if named not in PROVIDERS:
            raise Refusal(400, f"provider must be one of {', '.join(PROVIDERS)}, not {named[:40]!r}")
        return named
    headers = headers_of(request.scope)
    if "x-twilio-signature" in headers:
        return "twilio"
    if telnyx.SIGNATURE_HEADER in headers:
        return "telnyx"
    if plivo.SIGNATURE_HEADER in headers or plivo.MAIN_SIGNATURE_HEADER in headers:
        return "plivo"
    if headers.get("authorization", "").lower().startswith("bearer "):
        return "vonage"
    raise Refusal(
        403,
        "unsigned request: no X-Twilio-Signature, telnyx-signature-ed25519 or X-Plivo-Signature-V3 header"
        " and no Authorization bearer token",
    )


def _twilio_fields(request: Request, body: bytes) -> tuple[dict[str, list[str]] | None, dict[str, list[str]]]:
    """(form to sign over, fields to read). JSON bodies are signed through `bodySHA256`."""
    raw_query = request.scope.get("query_string", b"")
    query = parse_qs(raw_query.decode("latin-1"), keep_blank_values=True) if raw_query else {}
    content_type = headers_of(request.scope).get("content-type", "").split(";")[0].strip().lower()
    if request.method == "GET" or not body:
        return {}, query
    if content_type == "application/json":
        data = parse_json_object(body)
        return None, {k: [v if isinstance(v, str) else str(v)] for k, v in data.items() if v is not None}
    form = parse_form(body)
    return form, form


async def verify_provider_request(request: Request, ctx: GatewayContext, body: bytes | None = None) -> ProviderRequest:
    """Read the (size-limited) body unless given, verify the signature, and parse the fields."""
    if body is None:
        try:
            body = await read_limited_body(request)
        except BodyTooLarge as exc:
            raise Refusal(413, str(exc)) from None
    provider = _which_provider(request)
    origin = gateway_origin(request, ctx)
    settings = getattr(ctx.config.providers, provider)
    if settings is None:
        raise Refusal(403, f"{provider} is not configured on this gateway")
    url = called_url(request, origin)
    headers = headers_of(request.scope)
    try:
        if provider == "twilio":
            form, fields = _twilio_fields(request, body)
            verdict = twilio.verify_twilio_signature(
                settings.auth_token.get_secret_value(),
                url,
                form,
                body,
                headers.get("x-twilio-signature"),
                signature_settings=headers.get("x-twilio-webhooks-signature-settings"),
            )
        elif provider == "plivo":
            form, fields = _twilio_fields(request, body)
            verdict = plivo.verify_plivo_signature(
                settings.auth_token.get_secret_value(),
                request.method,
                [url],
                form,
                [headers.get(plivo.SIGNATURE_HEADER), headers.get(plivo.MAIN_SIGNATURE_HEADER)],
                headers.get(plivo.NONCE_HEADER),
            )
        elif provider == "telnyx":
            verdict = telnyx.verify_telnyx_signature(
                settings.public_key,
                body,
                headers.get(telnyx.SIGNATURE_HEADER),
                headers.get(telnyx.TIMESTAMP_HEADER),
                now=ctx.clock(),
                tolerance=settings.timestamp_tolerance,
            )
            fields = {}
        else:
            verdict = vonage.verify_vonage_jwt(
                headers.get("authorization"),
                settings.signature_secret.get_secret_value(),
                body,
                now=ctx.clock(),
                replay=None,
                window_seconds=settings.jwt_window,
                api_key=settings.api_key,
                application_id=settings.application_id,
            )
            fields = {}
    except BadRequest as exc:
        raise Refusal(400, f"malformed {provider} request: {exc}") from None
    if verdict.ok and provider == "vonage":  # before anything of the request is stored
        try:
            verdict = await ctx.unreplayed(verdict, settings.jwt_window)
        except StoreError as exc:
            log.error("could not check a vonage token for replay: %s", exc)
            raise Refusal(503, f"the gateway could not check this request for replay ({exc}); send it again") from None
    if not verdict.ok:
        SIGNATURE_FAILURES.labels(provider).inc()
        log.warning(
            "refused %s %s %s: %s (signature checked over %s)",
            provider,
            request.method,
            request.url.path,
            verdict.reason,
            verdict.signed_url or url,
        )
        if ctx.tunnel is not None:
            ctx.tunnel.nudge()  # the tunnel may have a new hostname: look again now
        raise Refusal(403, f"{provider} signature check failed: {verdict.reason}")
    if provider == "telnyx":
        try:
            fields = _twilio_fields(request, body)[1]  # TeXML: Twilio's form fields, or the GET query
        except BadRequest as exc:
            raise Refusal(400, f"malformed telnyx request: {exc}") from None
    elif provider == "vonage":
        try:
            if body:
                fields = parse_json_object(body)
            else:
                fields = {
                    k: v[-1]
                    for k, v in parse_qs(
                        request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
                    ).items()
                }
        except BadRequest as exc:
            raise Refusal(400, f"malformed vonage request: {exc}") from None
    return ProviderRequest(provider=provider, fields=fields, origin=origin)


def _parse_update(verified: ProviderRequest, *, answer: bool) -> CallUpdate:
    try:
        if verified.provider == "twilio":
            return twilio.parse_twilio_callback(verified.fields, kind="answer" if answer else "status")
        if verified.provider == "telnyx":
            return telnyx.parse_telnyx_callback(verified.fields, kind="answer" if answer else "status")
        if verified.provider == "plivo":
            return plivo.parse_plivo_callback(verified.fields, kind="answer" if answer else "status")
        if answer:
            return vonage.parse_vonage_answer(verified.fields)
        return vonage.parse_vonage_event(verified.fields)
    except BadRequest as exc:
        raise Refusal(400, f"malformed {verified.provider} callback: {exc}") from None


async def _store(
    ctx: GatewayContext, update: CallUpdate, *, run_id: str | None, seed: CallSeed | None = None
) -> AppliedUpdate:
    """`apply_update`, with a store failure answered 503: not accepted, so the provider may send
    it again (a 2xx is only ever given for what was written)."""
    try:
        return await ctx.store.apply_update(update, run_id=run_id, seed=seed)
    except StoreError as exc:
        log.error("could not store %s %s for call %s: %s", update.provider, update.kind, update.provider_call_id, exc)
        raise Refusal(
            503, f"the gateway could not store this {update.kind} callback ({exc}); it was not accepted, send it again"
        ) from None


def _answer_response(
    ctx: GatewayContext, verified: ProviderRequest, workflow_id: str, user_id: str, run_id: str
) -> Response:
    ws_url = as_websocket(verified.origin) + WS_PATH.format(
        workflow_id=workflow_id, user_id=user_id, workflow_run_id=run_id
    )
    token = mint_stream_token(
        ctx.secret_key,
        run_id,
        now=ctx.clock(),
        ttl=ctx.config.stream_token_ttl,
        workflow_id=workflow_id,
        user_id=user_id,
    )
    parameters = {"workflow_id": workflow_id, "user_id": user_id, "workflow_run_id": run_id, "stream_token": token}
    insecure = ws_url.startswith("ws://")
    if insecure:
        log.warning(
            "answering with an insecure %s URL: providers only connect to wss://; set public_url",
            ws_url.split("/api/")[0],
        )
    if verified.provider == "twilio":
        twiml = twilio.render_connect_twiml(ws_url, parameters, allow_insecure=insecure)
        return Response(twiml, media_type=twilio.TWIML_CONTENT_TYPE)
    if verified.provider == "telnyx":
        settings = ctx.config.providers.telnyx
        assert settings is not None  # a request verifies as Telnyx's only with its key configured
        texml = telnyx.render_connect_texml(ws_url, parameters, codec=settings.codec, allow_insecure=insecure)
        return Response(texml, media_type=telnyx.TEXML_CONTENT_TYPE)
    if verified.provider == "plivo":
        xml = plivo.render_stream_xml(ws_url, token, allow_insecure=insecure)
        return Response(xml, media_type=plivo.XML_CONTENT_TYPE)
    event_url = verified.origin + STATUS_PATH.format(workflow_run_id=run_id)
    ncco = vonage.render_connect_ncco(ws_url, parameters, event_url, allow_insecure=insecure)
    return JSONResponse(ncco, media_type=vonage.NCCO_CONTENT_TYPE)


_STATE_EVENTS = frozenset(STATE_EVENT.values())


def _count(verified: ProviderRequest | None, route: str, applied: AppliedUpdate) -> None:
    labelled(PROVIDER_REQUESTS, verified.provider if verified else "unknown", route, applied.outcome).inc()
    if any(event.type in _STATE_EVENTS for event in applied.events):  # one state reached: the record's
        labelled(CALL_TRANSITIONS, applied.record.state.value).inc()


async def _live_before_the_drain(ctx: GatewayContext, run_id: str | None) -> bool:
    """A call placed before the drain began (its answer is not a new call): known live here,
    or in the store and not ended."""
    if run_id is None:
        return False
    if run_id in ctx.live_calls:
        return True
    try:
        record = await ctx.store.get_call(run_id)
    except StoreError:
        return False
    return record is not None and not record.state.terminal


async def _answer(request: Request, workflow_id: str, user_id: str, run_id: str | None) -> Response:
    ctx = _context(request)
    verified = await verify_provider_request(request, ctx)
    if ctx.draining and not await _live_before_the_drain(ctx, run_id):
        raise Refusal(503, "this gateway instance is draining; new calls go to another instance")
    update = _parse_update(verified, answer=True)
    seed = CallSeed(
        workflow_id=workflow_id,
        user_id=user_id,
        provider=verified.provider,
        direction="inbound" if run_id is None else None,
    )
    applied = await _store(ctx, update, run_id=run_id, seed=seed)
    record = applied.record
    ctx.live_calls.note(record)
    RUN_ID.set(record.workflow_run_id)
    _count(verified, "answer", applied)
    log.info(
        "answered %s call %s run=%s state=%s",
        verified.provider,
        update.provider_call_id,
        record.workflow_run_id,
        record.state.value,
    )
    return _answer_response(
        ctx, verified, record.workflow_id or workflow_id, record.user_id or user_id, record.workflow_run_id
    )


async def initial_webhook(request: Request) -> Response:
    """The call's answer URL: TwiML or NCCO connecting the call's audio to the gateway."""
    try:
        workflow_id, user_id, run_id = _path_ids(request, "workflow_id", "user_id", "workflow_run_id")
        return await _answer(request, workflow_id, user_id, run_id)
    except Refusal as exc:
        return problem(exc.status, exc.detail)


async def inbound_webhook(request: Request) -> Response:
    """A number's inbound answer URL: mints the `workflow_run_id`, then answers as above."""
    try:
        workflow_id, user_id = _path_ids(request, "workflow_id", "user_id")
        return await _answer(request, workflow_id, user_id, None)
    except Refusal as exc:
        return problem(exc.status, exc.detail)


async def status_callback(request: Request, body: bytes | None = None) -> Response:
    """Lifecycle callbacks. The run ids `twilio`/`vonage` mean: match by the provider's call id."""
    try:
        (run_id,) = _path_ids(request, "workflow_run_id")
        ctx = _context(request)
        verified = await verify_provider_request(request, ctx, body)
        update = _parse_update(verified, answer=False)
        applied = await _store(ctx, update, run_id=None if run_id in PROVIDERS else run_id)
    except Refusal as exc:
        labelled(PROVIDER_REQUESTS, "unknown", "status", f"refused_{exc.status}").inc()
        return problem(exc.status, exc.detail)
    ctx.live_calls.note(applied.record)
    run = applied.record.workflow_run_id
    RUN_ID.set(run)
    _count(verified, "status", applied)
    await _end_live_media(ctx, applied)
    note_request(
        request.scope,
        f"{verified.provider} callback run={run} status={update.raw_status} outcome={applied.outcome}"
        f" events={','.join(e.type for e in applied.events) or '-'}",
        run,
    )
    return Response(status_code=204)


async def _end_live_media(ctx: GatewayContext, applied: AppliedUpdate) -> None:
    """The call has just ended: its live media session, on whichever instance, ends too (the
    provider closes the socket anyway; a socket that stays open must not go on recording)."""
    media = applied.record.media
    if not media.get("session") or media.get("ended") or not any(e.type == CALL_ENDED for e in applied.events):
        return
    try:
        await ctx.store.publish_control(applied.record.workflow_run_id, "hangup", {"reason": "call ended"})
    except StoreError as exc:  # the callback is stored: the provider's own close ends the session
        log.warning("could not ask the media session of run=%s to end: %s", applied.record.workflow_run_id, exc)


STATUS_PREFIX = STATUS_PATH.split("{", 1)[0]
_NO_CONTENT = {"type": "http.response.start", "status": 204, "headers": []}
_EMPTY_BODY = {"type": "http.response.body", "body": b""}


def direct_route(scope: Scope) -> Handler | None:
    """The status-callback route, taken ahead of Starlette's stack (`EdgeMiddleware.direct`):
    status callbacks are most of what providers send, and Starlette's error and exception
    middleware, router and response classes cost more per callback than the rest of its
    handling in the loop. The handling is `status_callback`'s own. None for other requests."""
    path = scope["path"]
    if scope["type"] == "http" and path.startswith(STATUS_PREFIX) and scope["method"] in ("POST", "GET"):
        run_id = path[len(STATUS_PREFIX) :]
        if run_id and "/" not in run_id:  # the route's `{workflow_run_id}`: one path segment
            return _status_callback_direct
    return None


async def _status_callback_direct(scope: Scope, receive: Receive, send: Send) -> int:
    scope["path_params"] = {"workflow_run_id": scope["path"][len(STATUS_PREFIX) :]}
    request = Request(scope, receive)
    try:
        body = await read_limited_body(request)
    except ClientDisconnect:
        return body_cut_short(scope)  # nothing to answer: the client is gone
    except BodyTooLarge as exc:
        labelled(PROVIDER_REQUESTS, "unknown", "status", "refused_413").inc()
        await problem(413, str(exc))(scope, receive, send)
        return 413
    response = await status_callback(request, body)
    if response.status_code == 204:
        await send(_NO_CONTENT)
        await send(_EMPTY_BODY)
    else:
        await response(scope, receive, send)
    return response.status_code


routes = [
    Route(
        "/api/v1/telephony/webhook/{workflow_id}/{user_id}/{workflow_run_id}", initial_webhook, methods=["GET", "POST"]
    ),
    Route("/api/v1/telephony/inbound/{workflow_id}/{user_id}", inbound_webhook, methods=["GET", "POST"]),
    Route(STATUS_PATH, status_callback, methods=["GET", "POST"]),
]
