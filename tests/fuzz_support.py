"""What the fuzz suite (tests/fuzz) shares: JSON-shaped strategies, the ERROR-record collector
that shows an unhandled exception in any thread, and the "value or the documented error" check."""

from __future__ import annotations

import logging
from typing import Any, Callable

from hypothesis import strategies as st

# JSON values of every shape; strings from all of Unicode (lone surrogates included: JSON can
# carry them as escapes).
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12,
)


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, from any thread: an unhandled exception leaves one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")

    def take(self) -> list[str]:
        found, self.records = self.records, []
        return found


def value_or_refusal(error: type[Exception], parse: Callable[..., Any], *args: Any) -> Any:
    """`parse(*args)`, or None when it raised `error` with a message; anything else propagates."""
    try:
        return parse(*args)
    except error as exc:
        assert str(exc), f"{error.__name__} without a message"
        return None
