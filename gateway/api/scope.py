"""What the provider routes read from an ASGI scope, read once per request."""

from __future__ import annotations

from starlette.types import Scope

_HEADERS = "gateway.headers"


def headers_of(scope: Scope) -> dict[str, str]:
    """The request's headers as {lower-case name: value}, the first of a repeated one (as
    Starlette's `Headers.get` answers). Made once per request and kept in the scope: the
    provider routes look up seven headers, and each `Headers.get` scanned the list again."""
    found: dict[str, str] | None = scope.get(_HEADERS)  # this function's own cache
    if found is None:
        found = {}
        for name, value in scope.get("headers", ()):
            key = name.decode("latin-1").lower()
            if key not in found:
                found[key] = value.decode("latin-1")
        scope[_HEADERS] = found
    return found
