"""RFC 9457 problem responses: every API error is `application/problem+json`."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.responses import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem(
    status: int, detail: str, *, title: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """A problem+json response whose `detail` says what was wrong."""
    body = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)
