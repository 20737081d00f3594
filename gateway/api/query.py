"""Integer query parameters (`limit`, `after`), read the one strict way."""

from __future__ import annotations

MAX_DIGITS = 18  # below 2**63: fits every store's integer column


def int_param(value: str, *, low: int, high: int) -> int | None:
    """`value` as an int in [low, high], or None when it is anything but ASCII decimal digits
    (after one optional "-") in that range. `str.isdigit` alone is not enough: it accepts
    "²", which `int` refuses, and any number of digits, which `int` refuses past 4300."""
    digits = value[1:] if value.startswith("-") else value
    if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_DIGITS:
        return None
    number = int(value)
    return number if low <= number <= high else None
