"""JSON text exactly as JavaScript's `JSON.stringify(JSON.parse(text))` writes it back.

Receivers written from Dialgen's documentation verify `x-dialgen-signature` over
`JSON.stringify(req.body)`, not over the bytes that arrived. The signature only matches when the
body sent is already in the form `JSON.stringify` gives back, so bodies signed that way are
written here, by ECMAScript's rules rather than Python's:

- compact (no spaces), UTF-8 as is; `"`, `\\` and control characters escaped, the five with short
  forms (`\\b \\f \\n \\r \\t`) by them, the rest as `\\u00xx` (lower-case hex), lone surrogates
  as `\\udxxx`; `/`, U+2028 and U+2029 as they are (ES2019 well-formed stringify);
- numbers as `Number.prototype.toString` writes the IEEE double: integral values without a
  decimal point (`30.0` is `30`, `-0.0` is `0`), exponents from 1e21 up and below 1e-6 (`1e+21`,
  `1e-7`), and integers beyond 2**53 as the double JavaScript reads them as; NaN and infinities
  as `null`;
- object keys in JavaScript's property order: integer-like keys (array indices `"0"` to
  `"4294967294"`, canonical form) first in ascending numeric order, then the others in insertion
  order (a JavaScript object reorders them on `JSON.parse`);
- anything that is not a JSON type is written as its `str()`, as the gateway's other JSON is.

Pure; tested against Node's own `JSON.stringify`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_MAX_INDEX = 2**32 - 2
MAX_DEPTH = 500
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {chr(code): _SHORT_ESCAPES.get(chr(code), f"\\u{code:04x}") for code in range(0x20)}
_ESCAPES.update(_SHORT_ESCAPES)
_ESCAPES.update({chr(code): f"\\u{code:04x}" for code in range(0xD800, 0xE000)})  # lone surrogates
_NEEDS_ESCAPE = frozenset(_ESCAPES)


def dumps(value: Any) -> bytes:
    """`value` as the UTF-8 bytes of `JSON.stringify(JSON.parse(json))` (see the module doc)."""
    parts: list[str] = []
    _write(value, parts, 0)
    return "".join(parts).encode("utf-8", "surrogatepass")


def number_text(value: float) -> str:
    """ECMAScript `Number::toString(value)` for a finite double (radix 10)."""
    if value == 0:
        return "0"
    if value < 0:
        return "-" + number_text(-value)
    digits, n = _shortest_digits(value)
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    exponent = n - 1
    sign = "+" if exponent >= 0 else "-"
    mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{mantissa}e{sign}{abs(exponent)}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """(digits, n) with value = 0.digits x 10**n, digits the shortest that round-trip (Python's
    repr and ECMAScript both pick the shortest; the last digit is the closest one)."""
    mantissa, _, exp_text = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    if fraction == "0":
        fraction = ""
    digits = whole + fraction
    n = len(whole) + (int(exp_text) if exp_text else 0)
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    return stripped.rstrip("0") or "0", n


def _is_index(key: str) -> bool:
    return key.isdigit() and key.isascii() and (key == "0" or key[0] != "0") and int(key) <= _MAX_INDEX


def _string(text: str) -> str:
    if _NEEDS_ESCAPE.isdisjoint(text):
        return f'"{text}"'
    return '"' + "".join(_ESCAPES.get(char, char) for char in text) + '"'


def _write(value: Any, parts: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep")
    if value is None or value is True or value is False:
        parts.append("null" if value is None else "true" if value else "false")
    elif isinstance(value, str):
        parts.append(_string(value))
    elif isinstance(value, int):
        parts.append(str(value) if abs(value) <= 2**53 else number_text(float(value)))
    elif isinstance(value, float):
        parts.append(number_text(value) if value == value and value not in (float("inf"), float("-inf")) else "null")
    elif isinstance(value, Mapping):
        keys = [str(key) for key in value]
        items = dict(zip(keys, value.values(), strict=True))
        indices = sorted((key for key in keys if _is_index(key)), key=int)
        ordered = indices + [key for key in keys if not _is_index(key)]
        parts.append("{")
        for position, key in enumerate(ordered):
            if position:
                parts.append(",")
            parts.append(_string(key))
            parts.append(":")
            _write(items[key], parts, depth + 1)
        parts.append("}")
    elif isinstance(value, (list, tuple)):
        parts.append("[")
        for position, item in enumerate(value):
            if position:
                parts.append(",")
            _write(item, parts, depth + 1)
        parts.append("]")
    else:
        parts.append(_string(str(value)))
