"""Reading a request body with a hard size limit, before anything parses it; the one bounded
JSON reader of the admin API."""

from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect, Request

from gateway.api.scope import headers_of
from gateway.errors import GatewayError, ProblemError
from gateway.providers.base import MAX_BODY_BYTES, BadRequest, parse_json_object


class BodyTooLarge(GatewayError):
    """The body is over the limit (HTTP 413)."""


class BadBody(ProblemError):
    """The request body is not what the route takes (HTTP 400/413)."""


async def read_limited_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, or `BodyTooLarge` as soon as it passes `limit` bytes."""
    declared = headers_of(request.scope).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:  # the ASGI messages themselves: Starlette's stream() is an async generator per request
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def json_body(request: Request, *, limit: int = MAX_BODY_BYTES, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body, read under `limit` and parsed by the providers' bounded
    parser (nesting depth, NaN, lone surrogates); `BadBody` (400/413) says what is wrong.
    An empty body is `{}` when `optional`."""
    try:
        raw = await read_limited_body(request, limit)
    except BodyTooLarge as error:
        raise BadBody(413, str(error)) from None
    if not raw.strip():
        if optional:
            return {}
        raise BadBody(400, "the body must be a JSON object")
    try:
        return parse_json_object(raw, limit)
    except BadRequest as error:
        raise BadBody(400, f"the body: {error}") from None
