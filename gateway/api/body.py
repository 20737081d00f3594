"""Reading a request body with a hard size limit, before anything parses it."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from gateway.api.scope import headers_of
from gateway.providers.base import MAX_BODY_BYTES


class BodyTooLarge(Exception):
    """The body is over the limit (HTTP 413)."""


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
