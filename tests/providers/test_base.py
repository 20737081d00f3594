"""Body parsers and the shared types: strict, bounded, and BadRequest is the only failure."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers.base import (
    MAX_BODY_BYTES,
    MAX_FORM_FIELDS,
    MAX_JSON_DEPTH,
    BadRequest,
    Verdict,
    parse_form,
    parse_json_object,
)


def test_verdict_defaults_and_truthiness() -> None:
    good, bad = Verdict(True), Verdict(False, "signature does not match")
    assert good and not bad
    assert (bad.reason, bad.signed_url, dict(bad.claims)) == ("signature does not match", "", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        good.ok = False  # type: ignore[misc]


def test_bad_request_is_a_value_error() -> None:
    assert issubclass(BadRequest, ValueError)


# --- parse_form ---------------------------------------------------------------------------------


def test_form_basic_decoding_keeps_blanks_and_order() -> None:
    raw = b"CallSid=CA1&From=%2B14155550100&Caller=+1415&Empty=&Flag&CallSid=CA2"
    assert parse_form(raw) == {
        "CallSid": ["CA1", "CA2"],
        "From": ["+14155550100"],
        "Caller": [" 1415"],  # "+" is a space in form encoding
        "Empty": [""],
        "Flag": [""],
    }
    assert list(parse_form(raw)) == ["CallSid", "From", "Caller", "Empty", "Flag"]


def test_form_utf8_values() -> None:
    assert parse_form("Name=J%C3%BCrgen&City=Zürich".encode()) == {"Name": ["Jürgen"], "City": ["Zürich"]}


def test_form_empty_body() -> None:
    assert parse_form(b"") == {}


@pytest.mark.parametrize(
    "raw, word",
    [
        (b"a=\xff", "UTF-8"),  # raw bytes not UTF-8
        (b"a=%FF", "UTF-8"),  # percent-decoded bytes not UTF-8
        (b"a=%C3", "UTF-8"),  # truncated sequence
        (b"x" * (MAX_BODY_BYTES + 1), "too large"),
        (b"&".join(b"f%d=1" % i for i in range(MAX_FORM_FIELDS + 1)), "too many"),
    ],
)
def test_form_refusals_name_the_problem(raw: bytes, word: str) -> None:
    with pytest.raises(BadRequest, match=word):
        parse_form(raw)


def test_form_field_limit_is_inclusive() -> None:
    raw = b"&".join(b"f%d=1" % i for i in range(MAX_FORM_FIELDS))
    assert len(parse_form(raw)) == MAX_FORM_FIELDS


def test_form_refuses_non_bytes() -> None:
    with pytest.raises(BadRequest):
        parse_form("a=1")  # type: ignore[arg-type]


# --- parse_json_object ----------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return ('{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)).encode()


def test_json_object_ok() -> None:
    assert parse_json_object(b'{"uuid": "abc", "n": 1, "x": [1, {"y": null}]}') == {
        "uuid": "abc",
        "n": 1,
        "x": [1, {"y": None}],
    }


def test_json_depth_limit_is_inclusive() -> None:
    assert parse_json_object(nested(MAX_JSON_DEPTH))
    with pytest.raises(BadRequest, match="nested too deeply"):
        parse_json_object(nested(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize(
    "raw, word",
    [
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b'{"a": 1,}', "invalid JSON"),
        (b"[1, 2]", "must be an object"),
        (b'"text"', "must be an object"),
        (b"null", "must be an object"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e999}', "out of range"),
        (b'{"a": "\xff"}', "UTF-8"),
        (b'\xef\xbb\xbf{"a": 1}', "BOM"),
        ('{"a": 1}'.encode("utf-16"), "UTF-8"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON"),  # int digit limit
        (b"[" * 60000 + b"]" * 60000, "too large"),
        (b'{"a":' + b"[" * 30000 + b"]" * 30000 + b"}", "nested too deeply"),
        (b'{"a": "' + b"x" * MAX_BODY_BYTES + b'"}', "too large"),
    ],
)
def test_json_refusals_name_the_problem(raw: bytes, word: str) -> None:
    with pytest.raises(BadRequest, match=word):
        parse_json_object(raw)


def test_json_duplicate_keys_last_wins() -> None:
    assert parse_json_object(b'{"a": 1, "a": 2}') == {"a": 2}


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=400)
@given(st.binary(max_size=2048))
def test_parse_form_only_raises_bad_request(raw: bytes) -> None:
    try:
        result = parse_form(raw)
    except BadRequest:
        return
    assert all(isinstance(k, str) and all(isinstance(v, str) for v in vs) for k, vs in result.items())


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_parse_form_text_only_raises_bad_request(text: str) -> None:
    try:
        parse_form(text.encode("utf-8", "surrogatepass"))
    except BadRequest:
        pass


@settings(max_examples=400)
@given(st.binary(max_size=2048))
def test_parse_json_object_only_raises_bad_request(raw: bytes) -> None:
    try:
        result = parse_json_object(raw)
    except BadRequest:
        return
    assert isinstance(result, dict)


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.dictionaries(texts, json_values, max_size=6), st.booleans())
def test_parse_json_object_round_trips_valid_objects(value: dict, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    assert parse_json_object(raw) == value
