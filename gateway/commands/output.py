"""How commands print: text for people by default, `--json` for programs; one error line on stderr."""

from __future__ import annotations

import sys
from typing import Any

from gateway import jsontext
from gateway.errors import GatewayError


class CommandError(GatewayError):
    """A command that cannot do what was asked; the message is printed as is and the exit code is `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def emit_json(value: Any) -> None:
    """One JSON document (or one JSON line of a stream) on stdout."""
    sys.stdout.write(jsontext.dumps(value) + "\n")
    sys.stdout.flush()


def emit(line: str = "") -> None:
    """One line of text on stdout, flushed (so a tail shows up at once through a pipe)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def short_time(iso: str | None) -> str:
    """`2026-12-07T19:58:01.123456Z` as `2026-12-07 19:58:01`; `-` for none."""
    if not iso:
        return "-"
    return iso.replace("T", " ")[:19]
