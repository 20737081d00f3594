"""The base of the gateway's own errors.

Every error the gateway raises on purpose derives from `GatewayError`: its message names what
was wrong and is safe to show (no secrets). The CLI prints one that a command did not turn into
its own message instead of a traceback; the HTTP app answers a `ProblemError` that a route did
not catch with its own status as problem details. Errors that are also a `ValueError` (bad input
read by a parser or a pydantic validator) keep that base as well.
"""

from __future__ import annotations


class GatewayError(Exception):
    """An error of the gateway's own, with a message that says what was wrong."""


class ProblemError(GatewayError):
    """A request the gateway answers with HTTP `status` and `detail` (problem details)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
