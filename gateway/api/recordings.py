"""A call's recording (WAV) and transcript (JSON) behind signed, expiring links.

The links go into the call record (`media.recording_url`, `media.transcript_url`), so
downstream systems can fetch them without the admin key; a link opens one artefact of one
call until it expires (403 otherwise) and says 404 when there is nothing (yet) to serve.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.api.context import GatewayContext
from gateway.api.problems import problem
from gateway.api.telephony import _PATH_ID
from gateway.calls.record import RECORDING_CHANNELS, isoformat
from gateway.media import signed_url
from gateway.media.recording import recording_path
from gateway.media.recording_channel import one_channel

RECORDING_PATH = "/api/v1/recordings/{workflow_run_id}.wav"
TRANSCRIPT_PATH = "/api/v1/transcripts/{workflow_run_id}.json"
_PATHS = {"recording": RECORDING_PATH, "transcript": TRANSCRIPT_PATH}


def media_link(
    origin: str, key: bytes, kind: str, run_id: str, *, now: float, ttl: int = signed_url.DEFAULT_TTL
) -> str:
    """The public, signed URL of a call's `recording` or `transcript`."""
    path = _PATHS[kind].format(workflow_run_id=quote(run_id, safe=":@-._~"))
    return f"{origin}{path}?{signed_url.signed_query(key, kind, run_id, now=now, ttl=ttl)}"


def with_fresh_links(
    record: dict[str, Any], key: bytes, *, now: float, ttl: int = signed_url.DEFAULT_TTL
) -> dict[str, Any]:
    """`record` (a call's JSON) with its recording and transcript links signed again from `now`.

    The links stored with the call expire `ttl` after the media started; the admin API hands
    out links that are good for `ttl` from the moment they are read, on the same path.
    """
    media = record.get("media")
    run_id = record.get("workflow_run_id")
    if not isinstance(media, dict) or not isinstance(run_id, str):
        return record
    fresh = dict(media)
    for kind in signed_url.KINDS:
        url = media.get(f"{kind}_url")
        if isinstance(url, str) and url:
            fresh[f"{kind}_url"] = (
                f"{url.partition('?')[0]}?{signed_url.signed_query(key, kind, run_id, now=now, ttl=ttl)}"
            )
    return {**record, "media": fresh}


def _refusal(request: Request, kind: str) -> Response | None:
    ctx: GatewayContext = request.app.state.gateway
    run_id = request.path_params["workflow_run_id"]
    if not _PATH_ID.match(run_id):
        return problem(404, "no such call")
    reason = signed_url.check(
        ctx.secret_key,
        kind,
        run_id,
        request.query_params.get("expires"),
        request.query_params.get("signature"),
        now=ctx.clock(),
    )
    return None if reason is None else problem(403, reason)


async def get_recording(request: Request) -> Response:
    """`GET /api/v1/recordings/{run}.wav?expires=&signature=[&channel=caller|agent]`: the stereo
    WAV (caller left, agent right), or one side of it as a mono WAV (Dograh's
    `user_recording_url` and `bot_recording_url`)."""
    if (refused := _refusal(request, "recording")) is not None:
        return refused
    ctx: GatewayContext = request.app.state.gateway
    run_id = request.path_params["workflow_run_id"]
    channel = request.query_params.get("channel")
    if channel is not None and channel not in RECORDING_CHANNELS:
        return problem(400, f"channel must be one of {', '.join(RECORDING_CHANNELS)}")
    path = recording_path(ctx.config.data_dir, run_id)
    if not path.is_file():
        return problem(404, "no recording for this call (yet): it is published when the call's media ends")
    if channel is None:
        return FileResponse(path, media_type="audio/wav", filename=f"{run_id}.wav")
    return StreamingResponse(
        one_channel(path, RECORDING_CHANNELS[channel]),
        media_type="audio/wav",
        headers={"Content-Disposition": f'attachment; filename="{run_id}-{channel}.wav"'},
    )


def transcript_lines(entries: list[Any]) -> list[dict[str, Any]]:
    """The final transcript lines of a timeline, oldest first."""
    lines = []
    for entry in entries:
        if entry.kind != "transcript":
            continue
        data = entry.data
        at = data.get("at")
        when = datetime.fromtimestamp(at, UTC) if isinstance(at, (int, float)) else entry.received_at
        lines.append({"role": data.get("role"), "text": data.get("text"), "at": isoformat(when)})
    return lines


async def get_transcript(request: Request) -> Response:
    """`GET /api/v1/transcripts/{run}.json?expires=&signature=`: the call's final transcript lines."""
    if (refused := _refusal(request, "transcript")) is not None:
        return refused
    ctx: GatewayContext = request.app.state.gateway
    run_id = request.path_params["workflow_run_id"]
    if await ctx.store.get_call(run_id) is None:
        return problem(404, "no such call")
    lines = transcript_lines(await ctx.store.get_timeline(run_id))
    return JSONResponse({"workflow_run_id": run_id, "lines": lines})


routes = [
    Route(RECORDING_PATH, get_recording, methods=["GET", "HEAD"]),
    Route(TRANSCRIPT_PATH, get_transcript, methods=["GET"]),
]
