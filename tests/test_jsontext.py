"""gateway.jsontext: dumps/dumps_bytes write what json.dumps(compact, ensure_ascii=False,
default=str) writes (NaN/inf -> null excepted), and loads reads what json.loads reads."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.jsontext import dumps, dumps_bytes, loads, loads_bounded, nesting_depth


def oracle(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


specials = ["\u2028", "\u2029", "\x00", "\x1f", "\x7f", '"', "\\", "/", "é", "€", "\U0001f600"]
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]) | st.sampled_from(specials), max_size=16)
edges = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**40, -(10**40)]
ints = st.integers() | st.sampled_from(edges)
finite = st.floats(allow_nan=False, allow_infinity=False)
# Floats in [1e-9, 1e-4) are left out here: orjson writes them unlike repr() (on purpose, below).
floats = finite.filter(lambda f: not 1e-9 <= abs(f) < 1e-4)
keys = texts | ints | finite | st.booleans() | st.none()  # non-str keys take the stdlib path
json_like = st.recursive(
    st.none() | st.booleans() | ints | floats | texts,
    lambda kids: st.lists(kids, max_size=4)
    | st.lists(kids, max_size=4).map(tuple)
    | st.dictionaries(keys, kids, max_size=4),
    max_leaves=24,
)


@settings(max_examples=400, deadline=None)
@given(json_like)
def test_dumps_matches_json_dumps_and_round_trips(value: Any) -> None:
    text = oracle(value)
    assert dumps(value) == text
    assert dumps_bytes(value) == text.encode("utf-8")
    assert oracle(loads(dumps(value))) == oracle(json.loads(text))  # type-sensitive (1 vs 1.0)


class Colour(str, enum.Enum):
    RED = "red"


class Tag(str):
    pass


@dataclasses.dataclass
class Point:
    x: int
    y: str


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 12, 6, 21, 0, tzinfo=dt.timezone.utc),
        dt.datetime(2026, 12, 6, 21, 0, 0, 123, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(2026, 12, 6, 21, 0, 0, 500),  # naive
        dt.date(2026, 1, 2),
        dt.time(1, 2, 3),
        Point(1, "é"),
        {"colour": Colour.RED, Colour.RED: [Colour.RED]},
        Tag("tag"),
        {Tag("k"): Tag("v")},
        {1, 2, 3},
        b"ab\xff",
        decimal.Decimal("1.10"),
        {"at": dt.datetime(2026, 1, 1), "n": 2**70, 3: None},
    ],
)
def test_values_orjson_would_write_differently_follow_json_dumps(value: Any) -> None:
    assert dumps(value) == oracle(value)
    assert dumps_bytes(value) == oracle(value).encode("utf-8")


def test_nan_and_infinities_become_null() -> None:
    # Deliberate (module docstring): json.dumps writes bare NaN/Infinity, which strict readers
    # such as PostgreSQL's jsonb refuse, so these are written as null instead.
    assert dumps([math.nan, math.inf, -math.inf]) == "[null,null,null]"
    assert dumps({"a": math.nan, "b": [1.5, math.inf]}) == '{"a":null,"b":[1.5,null]}'
    assert dumps_bytes(-math.inf) == b"null"


@pytest.mark.parametrize("value", [1e-9, 1e-7, 1e-5, 1.2345e-5, -3e-6, 9.999999999999999e-05])
def test_small_floats_are_written_in_orjsons_shortest_form_and_read_back_the_same(value: float) -> None:
    # Deliberate (module docstring): orjson writes "1e-7" / "0.00001" where repr writes
    # "1e-07" / "1e-05"; the text differs, the value read back does not.
    assert loads(dumps(value)) == value == json.loads(dumps(value))


@pytest.mark.parametrize("value", [[math.nan, 2**70], {1: math.inf}, [math.nan, dt.date(2026, 1, 1)],
                                   [float.__new__(type("F", (float,), {}), "nan")]])
def test_nan_is_null_also_when_the_standard_library_writes(value: Any) -> None:
    text = dumps(value)
    assert "NaN" not in text and "Infinity" not in text and "null" in text


def test_a_plain_enum_is_written_as_its_value() -> None:
    # Deliberate (module docstring): like an Enum with a str or int mixin, not "Plain.A".
    Plain = enum.Enum("Plain", {"A": 1})
    assert dumps(Plain.A) == "1"


def test_loads_reads_nan_and_infinity_text() -> None:
    value = loads('{"a": NaN, "b": [Infinity, -Infinity]}')
    assert math.isnan(value["a"]) and value["b"] == [math.inf, -math.inf]


@pytest.mark.parametrize("number", [2**64 - 1, -(2**63)])
def test_loads_reads_64_bit_edges(number: int) -> None:
    read = loads(str(number))
    assert type(read) is int and read == number


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**40, 9999999999999999999])
def test_loads_reads_ints_over_64_bits_exactly(number: int) -> None:
    (read,) = loads(f"[{number}]")  # orjson alone would return a float, e.g. 1.8446744073709552e+19
    assert type(read) is int and read == number


def test_loads_accepts_bytes_and_str() -> None:
    assert loads(b'{"k":"\xc3\xa9"}') == loads('{"k":"é"}') == {"k": "é"}
    assert loads(dumps_bytes({"s": "\u2028"})) == {"s": "\u2028"}


@pytest.mark.parametrize("garbage", [b"{", "{", b"", "", b"[1,]", b'{"a" 1}', "nul", b"\xff"])
def test_loads_malformed_raises_value_error(garbage: str | bytes) -> None:
    with pytest.raises(ValueError):
        loads(garbage)


@pytest.mark.parametrize("text", ["[" * 5000, "[" * 5000 + "1" + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000,
                                  "[1e99999" * 3000])
def test_deep_nesting_is_a_value_error_not_a_recursion_error(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)  # the standard library's fallback raised RecursionError here
    with pytest.raises(ValueError, match="nested deeper than 64 levels"):
        loads_bounded(text.encode(), max_depth=64, max_bytes=1 << 20)


@pytest.mark.parametrize(("text", "depth"), [
    (b"", 0), (b"1", 0), (b"[]", 1), (b'{"a": [1, {"b": []}]}', 4), (b'["[[[[", "\\"[[{"]', 1),
    (b'{"k": "}}}]]]"}', 1), (b"[[[", 3), (b'"[' + b"[" * 100 + b'"', 0),
])
def test_nesting_depth_counts_brackets_outside_strings(text: bytes, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_loads_bounded_reads_what_is_within_its_bounds_and_says_why_not_otherwise() -> None:
    nested = b'{"a": ' * 64 + b"1" + b"}" * 64
    assert loads_bounded(nested, max_depth=64, max_bytes=1000) is not None
    assert loads_bounded(b'["[[[[[[[[[["]', max_depth=1, max_bytes=100) == ["[[[[[[[[[["]
    with pytest.raises(ValueError, match="nested deeper than 63 levels"):
        loads_bounded(nested, max_depth=63, max_bytes=1000)
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        loads_bounded(b'"' + b"x" * 20 + b'"', max_depth=5, max_bytes=10)
    with pytest.raises(ValueError, match="not JSON"):
        loads_bounded(b"OK", max_depth=5, max_bytes=10)
