"""Twilio: signatures against the SDK's own compute_signature and Twilio's documented vectors,
callback parsing, TwiML rendering."""

from __future__ import annotations

import base64
import hashlib
import hmac
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import Any, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from gateway.calls.states import PROVIDER_STATUS, CallState
from gateway.providers.base import BadRequest, parse_form
from gateway.providers.twilio import (
    TWIML_CONTENT_TYPE,
    parse_twilio_callback,
    render_connect_twiml,
    render_hangup_twiml,
    verify_twilio_signature,
)

TOKEN = "test-twilio-auth-token-0123456789ab"
URL = "https://gw.example.com/api/v1/telephony/status-callback/run-1"
WS_URL = "wss://gw.example.com/api/v1/telephony/ws/wf-1/user-1/run-1"
FORM = {
    "CallSid": ["CA" + "a" * 32],
    "AccountSid": ["AC" + "0" * 32],
    "CallStatus": ["ringing"],
    "From": ["+14155550100"],
    "To": ["+14155550199"],
    "Direction": ["outbound-api"],
}


class _Multi(dict):
    """Lets the SDK oracle sign a dict of lists (it reads multi-values through getlist)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def sign(url: str, params: Mapping[str, Any] | None = None, *, token: str = TOKEN, algorithm: str | None = None) -> str:
    """The independent oracle: the twilio package's own signer."""
    return RequestValidator(token).compute_signature(url, _Multi(params or {}), algorithm)


def assert_no_secret(verdict: Any, secret: str = TOKEN) -> None:
    assert secret not in verdict.reason and secret not in verdict.signed_url


# --- known-answer vectors -----------------------------------------------------------------------


def test_documented_form_vector() -> None:
    # Twilio security page, "Explore the algorithm yourself": token 12345.
    url = "https://example.com/myapp.php?foo=1&bar=2"
    form = {
        "CallSid": ["CA1234567890ABCDE"],
        "Caller": ["+14158675310"],
        "Digits": ["1234"],
        "From": ["+14158675310"],
        "To": ["+18005551212"],
    }
    verdict = verify_twilio_signature("12345", url, form, b"", "L/OH5YylLD5NRKLltdqwSvS0BnU=")
    assert verdict.ok and verdict.signed_url == url
    # The same string signed by hand, as the page spells it out.
    text = url + "CallSidCA1234567890ABCDECaller+14158675310Digits1234From+14158675310To+18005551212"
    by_hand = base64.b64encode(hmac.new(b"12345", text.encode(), hashlib.sha1).digest()).decode()
    assert by_hand == "L/OH5YylLD5NRKLltdqwSvS0BnU="


def test_sdk_sample_parameters_with_oracle() -> None:
    # The SDK samples' parameter set (+12349013030); the vector above uses +14158675310.
    url = "https://example.com/myapp.php?foo=1&bar=2"
    form = {
        "CallSid": ["CA1234567890ABCDE"],
        "Caller": ["+12349013030"],
        "Digits": ["1234"],
        "From": ["+12349013030"],
        "To": ["+18005551212"],
    }
    sig = sign(url, form, token="12345")
    assert sig != "L/OH5YylLD5NRKLltdqwSvS0BnU="
    assert verify_twilio_signature("12345", url, form, b"", sig).ok
    assert not verify_twilio_signature("12345", url, form, b"", "L/OH5YylLD5NRKLltdqwSvS0BnU=").ok


JSON_BODY = b'{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}'
JSON_HASH = "5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9"


def test_documented_body_hash_vector() -> None:
    assert hashlib.sha256(JSON_BODY).hexdigest() == JSON_HASH
    url = f"https://example.com/myapp?bodySHA256={JSON_HASH}"
    sig = sign(url, token="12345")  # the URL alone is signed; the body is covered by the hash
    verdict = verify_twilio_signature("12345", url, None, JSON_BODY, sig)
    assert verdict.ok and verdict.signed_url == url


def test_body_hash_with_other_query_parameters() -> None:
    url = f"{URL}?foo=1&bodySHA256={JSON_HASH}"
    assert verify_twilio_signature(TOKEN, url, None, JSON_BODY, sign(url)).ok


def test_body_hash_refusals() -> None:
    url = f"{URL}?bodySHA256={JSON_HASH}"
    sig = sign(url)
    tampered = verify_twilio_signature(TOKEN, url, None, JSON_BODY.replace(b"+1234", b"+9999"), sig)
    assert (tampered.ok, tampered.reason) == (False, "body does not match bodySHA256")
    undecodable = verify_twilio_signature(TOKEN, url, None, b"\xff" + JSON_BODY, sig)
    assert (undecodable.ok, undecodable.reason) == (False, "body is not valid UTF-8")
    # Form params that came along do not replace the body check.
    assert not verify_twilio_signature(TOKEN, url, {"a": ["1"]}, b"a=1", sig).ok
    assert_no_secret(tampered)


def test_empty_body_with_body_hash() -> None:
    url = f"{URL}?bodySHA256={hashlib.sha256(b'').hexdigest()}"
    assert verify_twilio_signature(TOKEN, url, None, b"", sign(url)).ok


def test_json_body_without_body_hash_is_refused() -> None:
    # Never handed to the SDK as a str: it would iterate the characters.
    verdict = verify_twilio_signature(TOKEN, URL, None, JSON_BODY, sign(URL))
    assert not verdict.ok and "bodySHA256" in verdict.reason


# --- form and GET -----------------------------------------------------------------------------


def test_form_post_round_trip() -> None:
    assert verify_twilio_signature(TOKEN, URL, FORM, b"ignored", sign(URL, FORM)).ok


def test_form_parsed_from_wire_bytes() -> None:
    raw = b"CallSid=CA1&From=%2B14155550100&Empty=&Note=a+b"
    form = parse_form(raw)
    expected = URL + "CallSidCA1Empty" + "From+14155550100" + "Notea b"
    sig = base64.b64encode(hmac.new(TOKEN.encode(), expected.encode(), hashlib.sha1).digest()).decode()
    assert verify_twilio_signature(TOKEN, URL, form, raw, sig).ok


def test_get_request_params_in_query() -> None:
    url = URL + "?CallSid=CA1&CallStatus=completed&From=%2B14155550100"
    assert verify_twilio_signature(TOKEN, url, None, b"", sign(url)).ok
    assert not verify_twilio_signature(TOKEN, url.replace("completed", "failed"), None, b"", sign(url)).ok


def test_multi_valued_params_sorted_and_deduped() -> None:
    form = {"b": ["2", "1", "2"], "a": ["z"]}
    text = URL + "az" + "b1" + "b2"
    sig = base64.b64encode(hmac.new(TOKEN.encode(), text.encode(), hashlib.sha1).digest()).decode()
    assert sig == sign(URL, form)
    assert verify_twilio_signature(TOKEN, URL, form, b"", sig).ok
    assert verify_twilio_signature(TOKEN, URL, {"a": ["z"], "b": ["1", "2"]}, b"", sig).ok
    assert not verify_twilio_signature(TOKEN, URL, {"a": ["z"], "b": ["1", "3"]}, b"", sig).ok


def test_bare_string_values_are_one_value_each() -> None:
    form = {"CallSid": "CA1", "To": "+1415"}
    assert verify_twilio_signature(TOKEN, URL, form, b"", sign(URL, {"CallSid": ["CA1"], "To": ["+1415"]})).ok  # type: ignore[arg-type]


def test_starlette_multidicts_keep_every_value() -> None:
    from starlette.datastructures import FormData, QueryParams

    form = FormData([("b", "2"), ("a", "z"), ("b", "1")])
    assert verify_twilio_signature(TOKEN, URL, form, b"", sign(URL, {"a": ["z"], "b": ["1", "2"]})).ok
    update = parse_twilio_callback(QueryParams(f"CallSid={CALL_SID}&StatusCallbackEvent=a&StatusCallbackEvent=b"))
    assert update.params["StatusCallbackEvent"] == ["a", "b"]


def test_userinfo_is_dropped_and_never_reported() -> None:
    url = "https://user:hunter2@gw.example.com/x?y=1"
    verdict = verify_twilio_signature(TOKEN, url, FORM, b"", sign("https://gw.example.com/x?y=1", FORM))
    assert verdict.ok and verdict.signed_url == "https://gw.example.com/x?y=1"
    refused = verify_twilio_signature(TOKEN, url, FORM, b"", "bad")
    assert "hunter2" not in refused.signed_url + refused.reason


# --- ports --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signed, received",
    [
        ("https://gw.example.com/x", "https://gw.example.com:443/x"),  # Twilio drops the port (voice/HTTPS)
        ("https://gw.example.com/x", "https://gw.example.com:8443/x"),
        ("https://gw.example.com:443/x", "https://gw.example.com/x"),  # SDK's add_port variant
        ("http://gw.example.com:8080/x", "http://gw.example.com:8080/x"),  # HTTP keeps the port
        ("http://gw.example.com/x", "http://gw.example.com:80/x"),
    ],
)
def test_port_variants(signed: str, received: str) -> None:
    assert verify_twilio_signature(TOKEN, received, FORM, b"", sign(signed, FORM)).ok


def test_port_is_not_a_wildcard_for_other_hosts() -> None:
    assert not verify_twilio_signature(TOKEN, "https://other.example.com:443/x", FORM, b"", sign("https://gw.example.com/x", FORM)).ok


# --- WebSocket upgrade ------------------------------------------------------------------------


def test_wss_signed_without_slash() -> None:
    verdict = verify_twilio_signature(TOKEN, WS_URL, None, b"", sign(WS_URL))
    assert verdict.ok
    assert verdict.signed_url == f"{WS_URL} {WS_URL}/"


def test_wss_signed_with_trailing_slash() -> None:
    assert verify_twilio_signature(TOKEN, WS_URL, None, b"", sign(WS_URL + "/")).ok


def test_wss_received_with_trailing_slash() -> None:
    verdict = verify_twilio_signature(TOKEN, WS_URL + "/", None, b"", sign(WS_URL + "/"))
    assert verdict.ok and verdict.signed_url == WS_URL + "/"


def test_wss_not_valid_as_https() -> None:
    https_url = "https://" + WS_URL.removeprefix("wss://")
    assert not verify_twilio_signature(TOKEN, WS_URL, None, b"", sign(https_url)).ok


def test_trailing_slash_leniency_is_wss_only() -> None:
    assert not verify_twilio_signature(TOKEN, URL, FORM, b"", sign(URL + "/", FORM)).ok


# --- algorithm header -------------------------------------------------------------------------


def test_hmac_sha256_settings_header() -> None:
    settings_header = "key=webhooks_sharedkey_abc,algorithm=HMAC_SHA256"
    sig256 = sign(URL, FORM, algorithm="HMAC_SHA256")
    assert verify_twilio_signature(TOKEN, URL, FORM, b"", sig256, signature_settings=settings_header).ok
    assert not verify_twilio_signature(TOKEN, URL, FORM, b"", sig256).ok  # no header: SHA-1 expected
    sig1 = sign(URL, FORM)
    assert not verify_twilio_signature(TOKEN, URL, FORM, b"", sig1, signature_settings=settings_header).ok
    assert verify_twilio_signature(TOKEN, URL, FORM, b"", sig1, signature_settings="key=abc").ok  # no algorithm: SHA-1


def test_unsupported_algorithm() -> None:
    verdict = verify_twilio_signature(TOKEN, URL, FORM, b"", sign(URL, FORM), signature_settings="algorithm=HMAC_MD5")
    assert (verdict.ok, verdict.reason, verdict.signed_url) == (False, "unsupported signature algorithm", URL)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, form",
    [
        (URL.replace("run-1", "run-2"), FORM),  # tampered path
        (URL + "?x=1", FORM),  # added query
        (URL.replace("https://", "http://"), FORM),  # proxy saw http://
        (URL.replace("gw.example.com", "gw.example.org"), FORM),
        (URL, {**FORM, "CallStatus": ["completed"]}),  # tampered parameter
        (URL, {**FORM, "Extra": ["1"]}),  # added parameter
        (URL, {k: v for k, v in FORM.items() if k != "To"}),  # dropped parameter
        (URL, {**FORM, "From": [" +14155550100"]}),  # whitespace matters
    ],
)
def test_tampering_refused(url: str, form: dict) -> None:
    verdict = verify_twilio_signature(TOKEN, url, form, b"", sign(URL, FORM))
    assert (verdict.ok, verdict.reason, verdict.signed_url) == (False, "signature does not match", url)
    assert_no_secret(verdict)


@pytest.mark.parametrize(
    "signature",
    [
        "AAAA" + sign(URL, FORM)[4:],
        sign(URL, FORM)[:-2],
        sign(URL, FORM, token="another-token"),
        sign(URL, FORM).lower(),
        "not base64 at all ☃",
    ],
)
def test_tampered_signature_header_refused(signature: str) -> None:
    verdict = verify_twilio_signature(TOKEN, URL, FORM, b"", signature)
    assert (verdict.ok, verdict.reason) == (False, "signature does not match")


@pytest.mark.parametrize("signature", [None, "", "   "])
def test_missing_signature_header(signature: str | None) -> None:
    verdict = verify_twilio_signature(TOKEN, URL, FORM, b"", signature)
    assert verdict == verdict.__class__(False, "missing X-Twilio-Signature header", signed_url=URL)


def test_signature_whitespace_is_tolerated() -> None:
    assert verify_twilio_signature(TOKEN, URL, FORM, b"", " " + sign(URL, FORM) + " ").ok


def test_empty_token_refused() -> None:
    verdict = verify_twilio_signature("", URL, FORM, b"", sign(URL, FORM, token=""))
    assert not verdict.ok and verdict.reason == "auth token not configured"


@pytest.mark.parametrize("url", ["https://gw.example.com:99999/x", "https://gw.example.com:abc/x", "https://[::1/x", "", "/relative/path", "ftp://gw.example.com/x"])
def test_invalid_urls_refused_without_exceptions(url: str) -> None:
    verdict = verify_twilio_signature(TOKEN, url, FORM, b"", sign("https://gw.example.com/x", FORM))
    assert not verdict.ok and verdict.signed_url == url


def test_non_text_form_values_refused() -> None:
    verdict = verify_twilio_signature(TOKEN, URL, {"a": [1]}, b"", sign(URL))  # type: ignore[dict-item]
    assert not verdict.ok


@settings(max_examples=300)
@given(
    url=st.one_of(st.text(max_size=80), st.from_regex(r"(https?|wss)://[a-z.:0-9\[\]]{0,20}/[ -~]{0,30}", fullmatch=True)),
    body=st.binary(max_size=64),
    signature=st.one_of(st.none(), st.text(max_size=40)),
    settings_header=st.one_of(st.none(), st.text(max_size=40)),
    form=st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.lists(st.text(max_size=8), max_size=3), max_size=4)),
)
def test_verify_never_raises(url: str, body: bytes, signature: str | None, settings_header: str | None, form: Any) -> None:
    verdict = verify_twilio_signature(TOKEN, url, form, body, signature, signature_settings=settings_header)
    assert verdict.signed_url.startswith(url) or "@" in url
    assert_no_secret(verdict)


_field_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=400)
@given(
    host=st.sampled_from(["gw.example.com", "gw.example.com:443", "gw.example.com:8443", "127.0.0.1:8000", "[::1]:9000"]),
    scheme=st.sampled_from(["https", "http"]),
    path=st.from_regex(r"/[A-Za-z0-9/._~-]{0,30}", fullmatch=True),
    query=st.sampled_from(["", "?provider=twilio", "?a=1&a=2", "?x=%20y"]),
    form=st.dictionaries(_field_text, st.lists(_field_text, max_size=3), max_size=6),
    signer=st.sampled_from(["as called", "without port", "with port", "other token", "other form"]),
)
def test_verdict_agrees_with_the_sdk(host: str, scheme: str, path: str, query: str, form: dict[str, list[str]], signer: str) -> None:
    """Whatever path the check takes (the one-HMAC shortcut or the SDK's full check), it
    accepts exactly what the twilio package's own `validate` accepts."""
    url = f"{scheme}://{host}{path}{query}"
    bare = url.replace(":443", "").replace(":8443", "").replace(":8000", "").replace(":9000", "")
    signed_over = {"as called": url, "without port": bare, "with port": url if bare != url else bare.replace(host, host + ":443", 1)}
    if signer == "other token":
        signature = sign(url, form, token=TOKEN + "x")
    elif signer == "other form":
        signature = sign(url, {**form, "Injected": ["1"]})
    else:
        signature = sign(signed_over[signer], form)
    expected = RequestValidator(TOKEN).validate(url, _Multi(form), signature)
    assert verify_twilio_signature(TOKEN, url, form, b"", signature).ok == expected


# --- parse_twilio_callback --------------------------------------------------------------------

CALL_SID = "CA" + "0123456789abcdef" * 2


def callback(**fields: Any) -> dict[str, list[str]]:
    base: dict[str, Any] = {"CallSid": CALL_SID, "AccountSid": "AC" + "0" * 32}
    base.update(fields)
    return {k: v if isinstance(v, list) else [v] for k, v in base.items()}


@pytest.mark.parametrize("word, state", sorted(PROVIDER_STATUS["twilio"].items()))
def test_every_twilio_status(word: str, state: CallState) -> None:
    update = parse_twilio_callback(callback(CallStatus=word))
    assert (update.provider, update.kind, update.provider_call_id) == ("twilio", "status", CALL_SID)
    assert (update.raw_status, update.state) == (word, state)


def test_unknown_status_is_kept_raw() -> None:
    update = parse_twilio_callback(callback(CallStatus="stream-started"))
    assert (update.raw_status, update.state) == ("stream-started", None)
    assert parse_twilio_callback(callback()).raw_status is None


def test_full_completed_callback() -> None:
    update = parse_twilio_callback(
        callback(
            CallStatus="completed",
            From="+14155550100",
            To="+14155550199",
            Direction="outbound-api",
            SequenceNumber="3",
            Timestamp="Tue, 04 Aug 2026 17:20:15 +0000",
            CallDuration="42",
            Duration="1",
            CallbackSource="call-progress-events",
            SipResponseCode="200",
        )
    )
    assert update.state == CallState.COMPLETED
    assert update.sequence == 3
    assert update.occurred_at == datetime(2026, 8, 4, 17, 20, 15, tzinfo=timezone.utc)
    assert update.duration == 42
    assert (update.from_number, update.to_number, update.direction) == ("+14155550100", "+14155550199", "outbound")
    assert update.params["Direction"] == "outbound-api"
    assert update.params["CallbackSource"] == "call-progress-events"
    assert update.voicemail is None and update.answered_by is None


@pytest.mark.parametrize(
    "answered_by, voicemail",
    [
        ("human", False),
        ("machine_start", True),
        ("machine_end_beep", True),
        ("machine_end_silence", True),
        ("machine_end_other", True),
        ("fax", True),
        ("unknown", None),
        ("something_new", None),
    ],
)
def test_answered_by(answered_by: str, voicemail: bool | None) -> None:
    update = parse_twilio_callback(callback(AnsweredBy=answered_by, MachineDetectionDuration="2400"), kind="amd")
    assert (update.kind, update.voicemail, update.answered_by, update.state) == ("amd", voicemail, answered_by, None)


@pytest.mark.parametrize(
    "direction, normalized",
    [("inbound", "inbound"), ("outbound-api", "outbound"), ("outbound-dial", "outbound"), ("trunking-originating", None), ("", None)],
)
def test_direction(direction: str, normalized: str | None) -> None:
    update = parse_twilio_callback(callback(Direction=direction))
    assert update.direction == normalized
    assert update.params["Direction"] == direction


@pytest.mark.parametrize(
    "stamp, expected",
    [
        ("Tue, 04 Aug 2026 17:20:15 +0000", datetime(2026, 8, 4, 17, 20, 15, tzinfo=timezone.utc)),
        ("Tue, 04 Aug 2026 19:20:15 +0200", datetime(2026, 8, 4, 17, 20, 15, tzinfo=timezone.utc)),
        ("04 Aug 2026 17:20:15 -0000", datetime(2026, 8, 4, 17, 20, 15, tzinfo=timezone.utc)),
        ("Tue, 04 Aug 2026 17:20:15 GMT", datetime(2026, 8, 4, 17, 20, 15, tzinfo=timezone.utc)),
        ("yesterday", None),
        ("Tue, 32 Aug 2026 17:20:15 +0000", None),
        ("2026-08-04T17:20:15Z", None),
        ("", None),
    ],
)
def test_timestamp(stamp: str, expected: datetime | None) -> None:
    update = parse_twilio_callback(callback(Timestamp=stamp))
    assert update.occurred_at == expected
    if expected is not None:
        assert update.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("value, expected", [("0", 0), ("65", 65), (" 7 ", 7), ("-1", None), ("1.5", None), ("abc", None), ("", None)])
def test_call_duration(value: str, expected: int | None) -> None:
    assert parse_twilio_callback(callback(CallDuration=value)).duration == expected


@pytest.mark.parametrize("value, expected", [("0", 0), ("12", 12), ("", None)])
def test_sequence_number(value: str, expected: int | None) -> None:
    assert parse_twilio_callback(callback(SequenceNumber=value)).sequence == expected


@pytest.mark.parametrize("value", ["x", "-1", "1.0", "1e3", "１", "1_000", "9" * 40])
def test_sequence_number_must_be_an_integer(value: str) -> None:
    with pytest.raises(BadRequest, match="SequenceNumber"):
        parse_twilio_callback(callback(SequenceNumber=value))


def test_params_flattened_for_the_timeline() -> None:
    update = parse_twilio_callback(callback(CallStatus="ringing", StatusCallbackEvent=["a", "b"], Empty=""))
    assert update.params == {
        "CallSid": CALL_SID,
        "AccountSid": "AC" + "0" * 32,
        "CallStatus": "ringing",
        "StatusCallbackEvent": ["a", "b"],
        "Empty": "",
    }


def test_plain_string_mapping_is_accepted() -> None:
    update = parse_twilio_callback({"CallSid": CALL_SID, "CallStatus": "busy"})  # type: ignore[dict-item]
    assert (update.provider_call_id, update.state) == (CALL_SID, CallState.BUSY)


def test_repeated_identical_call_sid_collapses() -> None:
    assert parse_twilio_callback({"CallSid": [CALL_SID, CALL_SID]}).provider_call_id == CALL_SID


@pytest.mark.parametrize(
    "params, word",
    [
        ({}, "missing CallSid"),
        ({"CallSid": [""]}, "missing CallSid"),
        ({"CallSid": []}, "missing CallSid"),
        ({"CallSid": ["CA 1"]}, "CallSid"),
        ({"CallSid": ["CA\x00"]}, "CallSid"),
        ({"CallSid": ["CAé"]}, "CallSid"),
        ({"CallSid": ["C" * 65]}, "CallSid"),
        ({"CallSid": ["CA1", "CA2"]}, "conflicting values for CallSid"),
        ({"CallSid": [CALL_SID], "CallStatus": ["busy", "failed"]}, "conflicting values for CallStatus"),
        ({"CallSid": [CALL_SID], "From": ["x" * 1025]}, "From too long"),
        ({"CallSid": [CALL_SID], "x" * 300: ["1"]}, "field name too long"),
        ({"CallSid": [CALL_SID], "From": [1]}, "From must be text"),
        ({"CallSid": [CALL_SID], "From": 1}, "From must be text"),
        ({"CallSid": [CALL_SID], "From": [b"+1"]}, "From must be text"),
        ({"CallSid": [CALL_SID], 3: ["x"]}, "field name"),
        ({f"f{i}": ["1"] for i in range(1001)}, "too many fields"),
    ],
)
def test_malformed_callbacks(params: Any, word: str) -> None:
    with pytest.raises(BadRequest, match=word):
        parse_twilio_callback(params)


def test_hostile_field_names_are_quoted_in_errors() -> None:
    with pytest.raises(BadRequest) as info:
        parse_twilio_callback({"CallSid": [CALL_SID], "evil\nname": [1]})  # type: ignore[list-item]
    assert "\n" not in str(info.value) and "'evil\\nname' must be text" == str(info.value)


def test_non_mapping_refused() -> None:
    with pytest.raises(BadRequest):
        parse_twilio_callback([("CallSid", ["CA1"])])  # type: ignore[arg-type]


@settings(max_examples=400)
@given(st.binary(max_size=1024))
def test_callback_from_arbitrary_bytes_only_raises_bad_request(raw: bytes) -> None:
    try:
        parse_twilio_callback(parse_form(raw))
    except BadRequest:
        pass


field_names = st.sampled_from(["CallSid", "CallStatus", "AnsweredBy", "SequenceNumber", "Timestamp", "CallDuration", "Direction", "From", "To"]) | st.text(max_size=6)


@settings(max_examples=400)
@given(st.dictionaries(field_names, st.lists(st.text(max_size=40), max_size=3) | st.text(max_size=40), max_size=9))
def test_callback_from_arbitrary_fields_only_raises_bad_request(params: dict) -> None:
    try:
        update = parse_twilio_callback(params)
    except BadRequest:
        return
    assert update.provider_call_id
    assert update.occurred_at is None or update.occurred_at.tzinfo is not None


# --- TwiML ----------------------------------------------------------------------------------


def test_connect_twiml_parses_back() -> None:
    parameters = {"workflow_run_id": "run-1", "token": "a&b<c>\"d'e", "note": "Zürich ☃", "empty": ""}
    xml = render_connect_twiml(WS_URL, parameters)
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml.encode("utf-8"))
    assert root.tag == "Response"
    (connect,) = list(root)
    assert connect.tag == "Connect"
    (stream,) = list(connect)
    assert stream.tag == "Stream" and stream.attrib == {"url": WS_URL}
    assert [(p.tag, p.attrib) for p in stream] == [("Parameter", {"name": k, "value": v}) for k, v in parameters.items()]


def test_connect_twiml_without_parameters() -> None:
    stream = ET.fromstring(render_connect_twiml(WS_URL, {}))[0][0]
    assert stream.attrib == {"url": WS_URL} and list(stream) == []


def test_content_type() -> None:
    assert TWIML_CONTENT_TYPE == "text/xml"


@pytest.mark.parametrize(
    "url",
    ["ws://gw.example.com/ws", "https://gw.example.com/ws", "wss:///ws", "/api/v1/telephony/ws", WS_URL + "?token=1", WS_URL + "#x", "wss://gw\x00.example.com/ws"],
)
def test_connect_twiml_refuses_bad_stream_urls(url: str) -> None:
    with pytest.raises(ValueError):
        render_connect_twiml(url, {})


@pytest.mark.parametrize(
    "parameters",
    [{"": "x"}, {"a": "\x01"}, {"\x0b": "x"}, {"a": "x" * 499}, {"a": 1}, {1: "a"}],
)
def test_connect_twiml_refuses_bad_parameters(parameters: dict) -> None:
    with pytest.raises(ValueError):
        render_connect_twiml(WS_URL, parameters)


def test_connect_twiml_parameter_length_limit() -> None:
    render_connect_twiml(WS_URL, {"a": "x" * 498})  # name + value = 499 < 500


def test_hangup_twiml() -> None:
    root = ET.fromstring(render_hangup_twiml())
    assert [child.tag for child in root] == ["Hangup"]
    for reason in ("rejected", "busy"):
        (reject,) = list(ET.fromstring(render_hangup_twiml(reason)))
        assert (reject.tag, reject.attrib) == ("Reject", {"reason": reason})
    with pytest.raises(ValueError):
        render_hangup_twiml("because")
