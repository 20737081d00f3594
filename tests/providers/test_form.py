"""parse_form against its oracle, urllib.parse.parse_qs(keep_blank_values=True, errors="strict"):
same dict, key order and lists; BadRequest where parse_qs would raise UnicodeDecodeError, for a
raw body that is not UTF-8, and past MAX_FORM_FIELDS / MAX_BODY_BYTES."""

from __future__ import annotations

from urllib.parse import parse_qs, parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers.base import MAX_BODY_BYTES, MAX_FORM_FIELDS, BadRequest, parse_form


def oracle(raw: bytes) -> dict[str, list[str]] | type[BadRequest]:
    try:
        text = raw.decode("utf-8")
        return parse_qs(text, keep_blank_values=True, strict_parsing=False, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return BadRequest


def check(raw: bytes) -> None:
    expected = oracle(raw)
    if expected is BadRequest:
        with pytest.raises(BadRequest, match="UTF-8"):
            parse_form(raw)
    else:
        got = parse_form(raw)
        assert got == expected
        assert list(got) == list(expected)


PIECES = ["&", "=", "+", "%", "%2B", "%26", "%3D", "%20", "%zz", "%4", "%%", "%C3%A9", "%FF", "%E2%82",
          "%E2%82%AC", "%ED%A0%80", "é", "€", "\u2028", " ", ";", "", "a", "b", "From", "CallSid"]
ENCODED = st.sampled_from(PIECES).map(str.encode) | st.text(max_size=3).map(
    lambda t: t.encode("utf-8", "surrogatepass")
)
RAW = st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xc0\xaf"])  # raw bytes that are not UTF-8


@settings(max_examples=500, deadline=None)
@given(st.lists(ENCODED, max_size=40))
def test_form_matches_parse_qs(pieces: list[bytes]) -> None:
    check(b"".join(pieces))


@settings(max_examples=200, deadline=None)
@given(st.lists(ENCODED | RAW, max_size=30))
def test_form_matches_parse_qs_with_raw_invalid_bytes(pieces: list[bytes]) -> None:
    check(b"".join(pieces))


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"", {}),
        (b"&", {}),
        (b"&&&&", {}),
        (b"a", {"a": [""]}),
        (b"=", {"": [""]}),
        (b"==", {"": ["="]}),
        (b"&=&", {"": [""]}),
        (b"a=b=c", {"a": ["b=c"]}),
        (b"a=&b&c=", {"a": [""], "b": [""], "c": [""]}),
        (b"a=%zz&b=%4&c=%&d=%%41", {"a": ["%zz"], "b": ["%4"], "c": ["%"], "d": ["%A"]}),
        (b"%3D=%26&%2B=+%2B+", {"=": ["&"], "+": [" + "]}),
        (b"a;b=1", {"a;b": ["1"]}),  # only "&" separates fields
        ("n=%C3%A9&é=€".encode(), {"n": ["é"], "é": ["€"]}),
    ],
)
def test_form_edge_cases(raw: bytes, expected: dict[str, list[str]]) -> None:
    assert parse_form(raw) == expected
    check(raw)


def test_form_repeated_names_keep_arrival_order() -> None:
    got = parse_form(b"x=1&y=0&x=2&&x=&x=3")
    assert got == {"x": ["1", "2", "", "3"], "y": ["0"]}
    assert list(got) == ["x", "y"]


@pytest.mark.parametrize("raw", [b"\xff=1", b"a=\xc3\x28", b"a=\xed\xa0\x80", b"a=1&b=\xe2\x82", b"\xef\xbb"])
def test_form_refuses_raw_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="body is not valid UTF-8"):
        parse_form(raw)


@pytest.mark.parametrize("raw", [b"%FF=1", b"a=%E2%82", b"a=%ED%A0%80", b"a=%C0%AF", b"ok=1&a%C3=1"])
def test_form_refuses_invalid_utf8_after_percent_decoding(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="not valid UTF-8 after percent-decoding"):
        parse_form(raw)


def test_form_field_limit_counts_bare_names() -> None:
    assert parse_form(b"&".join([b"f"] * MAX_FORM_FIELDS)) == {"f": [""] * MAX_FORM_FIELDS}
    with pytest.raises(BadRequest, match="too many form fields"):
        parse_form(b"&".join([b"f"] * (MAX_FORM_FIELDS + 1)))


def test_form_field_limit_counts_separators_like_parse_qs_max_num_fields() -> None:
    # MAX_FORM_FIELDS fields and a trailing "&": refused, as parse_qsl(max_num_fields=...) does.
    raw = b"&".join(b"f%d=1" % i for i in range(MAX_FORM_FIELDS)) + b"&"
    with pytest.raises(ValueError):
        parse_qsl(raw.decode(), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    with pytest.raises(BadRequest, match="too many form fields"):
        parse_form(raw)


def test_form_body_size_limit_is_inclusive() -> None:
    raw = b"a=" + b"x" * (MAX_BODY_BYTES - 2)
    assert len(raw) == MAX_BODY_BYTES
    assert parse_form(raw) == {"a": ["x" * (MAX_BODY_BYTES - 2)]}
    with pytest.raises(BadRequest, match="too large"):
        parse_form(raw + b"x")


def test_form_accepts_bytearray_and_memoryview() -> None:
    assert parse_form(bytearray(b"a=1")) == parse_form(memoryview(b"a=1")) == {"a": ["1"]}


def test_form_twilio_status_callback() -> None:
    raw = (
        b"Called=%2B15550199&ToState=CA&CallerCountry=US&Direction=outbound-api&Timestamp=Sat%2C+06+Dec+2026"
        b"+21%3A00%3A00+%2B0000&CallbackSource=call-progress-events&SipResponseCode=200&CallerState="
        b"&CallSid=CA0123456789abcdef0123456789abcdef&AccountSid=AC0123456789abcdef0123456789abcdef"
        b"&From=%2B15550100&To=%2B15550199&CallStatus=completed&CallDuration=42&ApiVersion=2010-04-01"
        b"&CallerName=Ren%C3%A9e+M%C3%BCller&SequenceNumber=3"
    )
    got = parse_form(raw)
    check(raw)
    assert got["Timestamp"] == ["Sat, 06 Dec 2026 21:00:00 +0000"]
    assert got["From"] == ["+15550100"] and got["To"] == ["+15550199"]
    assert got["CallStatus"] == ["completed"] and got["CallerState"] == [""]
    assert got["CallerName"] == ["Renée Müller"]
    assert list(got)[:3] == ["Called", "ToState", "CallerCountry"] and len(got) == 17
