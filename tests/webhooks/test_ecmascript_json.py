"""`ecmascript_json.dumps` writes what JavaScript's `JSON.stringify(JSON.parse(text))` gives back,
checked against Node itself, and reads back as the same JSON values."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dial.node_support import Stringify
from gateway.webhooks import ecmascript_json


@pytest.fixture(scope="module")
def node():
    stringify = Stringify()
    yield stringify
    stringify.close()


NUMBERS = [0.0, -0.0, 1.0, -1.0, 30.0, 0.1, 0.5, 1.5, 123.456, 1e-6, 1.5e-6, 1e-7, 1.234e-7, 1e20, 1e21, 1.5e21,
           123456789012345680000.0, 2.0**53, 2.0**53 + 2, 5e-324, 1.7976931348623157e308, 0.000001234, 100.0,
           1e16, 12345.678e10, 2**53, 2**53 + 1, 2**64, -(2**70), 10**30]
KEYS = {"b": 1, "10": 2, "2": 3, "a": 4, "01": 5, "-1": 6, "1.5": 7, "4294967294": 8, "4294967295": 9, "0": 10,
        "٣": 11, "": 12}
STRINGS = ["plain", "quote\" back\\slash", "\x00\x01\x1f\x7f", "\b\f\n\r\t", "é 漢字 😀", "a/b</script>",
           "\u2028\u2029", "\ud800", "x\udfffy"]


@pytest.mark.parametrize("value", NUMBERS, ids=repr)
def test_numbers_as_javascript_writes_them(node, value):
    assert ecmascript_json.dumps(value).decode() == node(ecmascript_json.dumps(value).decode())
    if isinstance(value, float):
        assert float(json.loads(ecmascript_json.dumps(value))) == value


@pytest.mark.parametrize("value", STRINGS, ids=repr)
def test_strings_as_javascript_writes_them(node, value):
    text = ecmascript_json.dumps(value).decode("utf-8", "surrogatepass")
    assert text == node(text)


def test_integer_like_keys_come_first_as_a_javascript_object_orders_them(node):
    text = ecmascript_json.dumps(KEYS).decode()
    assert text == node(text)
    assert list(json.loads(text)) == ["0", "2", "10", "4294967294", "b", "a", "01", "-1", "1.5", "4294967295",
                                      "٣", ""]


def test_values_without_a_json_type_are_their_text_and_nan_is_null():
    assert ecmascript_json.dumps({"n": math.nan, "i": -math.inf, "t": (1, 2), "o": object.__class__}) == (
        b'{"n":null,"i":null,"t":[1,2],"o":"<class \'type\'>"}')


def test_depth_is_bounded():
    deep: list = []
    for _ in range(ecmascript_json.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(ValueError, match="nested"):
        ecmascript_json.dumps(deep)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6) | st.integers(0, 99).map(str),
                                                                      children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
@example({"duration": 30.0, "contactContext": {"2": "b", "1": "a", "name": "Zoë"}, "score": 0.1 + 0.2})
def test_any_json_value_is_already_what_javascript_gives_back(node, value):
    text = ecmascript_json.dumps(value).decode("utf-8", "surrogatepass")
    assert text == node(text)
