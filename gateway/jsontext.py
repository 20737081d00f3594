"""Compact JSON text for the hot paths: stored rows, event bodies, webhook bodies.

One place that says how the gateway writes and reads JSON. Writing: no spaces, UTF-8 as is
(not `\\u` escapes), anything else JSON has no type for written as its `str()`; that is
`json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)`, done by orjson (an
order of magnitude faster on a call record: ~0.7 against ~9 us). What orjson would write
differently or refuses (integers over 64 bits, keys that are not strings, subclasses of the JSON
types, dataclasses, datetimes) goes to the standard library instead. Three differences from
`json.dumps` are kept on purpose, none of which changes a value read back:
- NaN and infinities, which JSON has no way to write, become null (`json.dumps` writes a bare
  `NaN` that strict readers, PostgreSQL's jsonb among them, refuse);
- a float between 1e-9 and 1e-4 is written in orjson's shortest form (`1e-7`, `0.00001`), where
  Python's repr writes `1e-07`, `1e-05`;
- a plain `Enum` member is written as its value, as an Enum with a str or int mixin is anyway.

Reading: orjson, except for text with a number of 19 or more digits (orjson reads an integer
beyond 64 bits as a float and would lose its digits) or what orjson refuses and `json.loads`
reads (`NaN`): the standard library then. Either way what cannot be read is a ValueError (the
standard library's RecursionError on deep nesting included). Text from outside (an endpoint's
answer) is read with `loads_bounded`: its size and nesting depth are checked before it is parsed.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

_STDLIB = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
_LONG_NUMBER = re.compile(rb"\d{19}")


class _Different(Exception):
    """orjson would write this value unlike `json.dumps`: use the standard library."""


def _refuse(value: Any) -> Any:
    raise _Different


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities (of any float type) as None, for the standard library."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _text(value: Any) -> bytes | str:
    try:
        return orjson.dumps(value, default=_refuse, option=_OPTIONS)
    except (_Different, TypeError, orjson.JSONEncodeError):
        return _STDLIB.encode(_finite(value))


def dumps(value: Any) -> str:
    """The value as compact JSON text."""
    text = _text(value)
    return text.decode("utf-8") if isinstance(text, bytes) else text


def dumps_bytes(value: Any) -> bytes:
    """The value as compact JSON, UTF-8 encoded."""
    text = _text(value)
    return text if isinstance(text, bytes) else text.encode("utf-8")


def loads(text: str | bytes) -> Any:
    """Parse JSON text (see the module for which reader); ValueError when it cannot be read."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    try:
        if _LONG_NUMBER.search(raw):
            return json.loads(text)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in JSON text (brackets inside strings do not count).
    Linear in the text and never recursive, whatever the text is."""
    brackets = raw.translate(None, _NOT_BRACKETS)
    if len(brackets) <= 1:
        return len(brackets)
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_bounded(raw: bytes, *, max_depth: int, max_bytes: int) -> Any:
    """Parse JSON that came from outside within bounds: ValueError, saying why, for text longer
    than `max_bytes`, nested deeper than `max_depth`, or not JSON."""
    if len(raw) > max_bytes:
        raise ValueError(f"longer than {max_bytes} bytes")
    if raw.count(b"[") + raw.count(b"{") > max_depth and nesting_depth(raw) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        return loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON: {str(exc)[:120]}") from None
