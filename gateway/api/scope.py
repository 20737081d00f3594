"""What the provider routes read from an ASGI scope, read once per request."""

from __future__ import annotations

from typing import Any

_HEADERS = "gateway.headers"


def headers_of(scope: dict[str, Any]) -> dict[str, str]:
    """The request's headers as {lower-case name: value}, the first of a repeated one (as
    Starlette's `Headers.get` answers). Made once per request and kept in the scope: the
    provider routes look up seven headers, and each `Headers.get` scanned the list again."""
    found = scope.get(_HEADERS)
    if found is None:
        found = {}
        for name, value in scope.get("headers", ()):
            key = name.decode("latin-1").lower()
            if key not in found:
                found[key] = value.decode("latin-1")
        scope[_HEADERS] = found
    return found
