"""The Twilio signature check against twilio's own `RequestValidator` as the oracle, and the
exact refusal for each way a request can be wrong. Written to kill the mutants that survived
the first mutation run (docs/mutation.md): host parsing that an `@` in the path or query can
fool, the `bodySHA256` guard, the one-HMAC shortcut."""

from __future__ import annotations

import hashlib

import pytest
from starlette.datastructures import FormData
from twilio.request_validator import HMAC_SHA1, HMAC_SHA256, RequestValidator

from gateway.providers.twilio import _matches_exactly, verify_twilio_signature

TOKEN = "oracle-auth-token"
SDK = RequestValidator(TOKEN)
GW = "https://gw.example.com/api/v1/telephony/status-callback/run-1"
FORM = {"CallSid": ["CA1"], "CallStatus": ["completed"], "Empty": [""]}


def flat(form):
    return {k: v[0] for k, v in form.items()}


def check(url, form=FORM, body=b"", signature=None, **kw):
    return verify_twilio_signature(TOKEN, url, form, body, signature, **kw)


@pytest.mark.parametrize("url", [
    GW, GW + "?a=1&b=2", "https://gw.example.com:8443/x", "http://gw.example.com/x?y=%20z", "wss://gw.example.com/ws/a",
])
def test_a_signature_from_the_sdk_validates_exactly_its_url_and_form(url):
    signature = SDK.compute_signature(url, flat(FORM))
    verdict = check(url, signature=signature)
    assert verdict.ok is True and verdict.reason == ""
    assert check(url + "x", signature=signature).ok is False
    assert check(url, form={**FORM, "CallStatus": ["ringing"]}, signature=signature).ok is False
    assert check(url, form={**FORM, "Extra": ["1"]}, signature=signature).ok is False


@pytest.mark.parametrize(("signed", "called"), [
    ("https://evil.example/", "https://gw.example.com?x=@evil.example/"),
    ("https://evil.example/x", "https://gw.example.com/p@evil.example/x"),
    ("https://evil.example/", "https://gw.example.com/?q=@evil.example/"),
    ("https://evil.example#/", "https://gw.example.com#@evil.example/"),
    ("https://evil.example/", "https://gw.example.com/#@evil.example/"),
])
def test_an_at_sign_in_the_path_query_or_fragment_does_not_move_the_host(signed, called):
    """A signature over one host must not validate a URL whose path, query or fragment holds
    `@host`: only userinfo before the first `/`, `?` or `#` is dropped."""
    signature = SDK.compute_signature(signed, flat(FORM))
    verdict = check(called, signature=signature)
    assert verdict.ok is False and verdict.reason == "signature does not match"
    assert SDK.compute_signature(called, flat(FORM)) != signature


def test_userinfo_is_dropped_up_to_its_last_at_sign():
    signature = SDK.compute_signature("https://gw.example.com/x", flat(FORM))
    for called in ("https://user:pw@gw.example.com/x", "https://a@b@gw.example.com/x", "https://@gw.example.com/x"):
        verdict = check(called, signature=signature)
        assert verdict.ok is True, called
        assert "pw" not in verdict.signed_url and verdict.signed_url == "https://gw.example.com/x"
    assert check("https://gw.example.com@other.example/x", signature=signature).ok is False


def test_signed_url_names_both_wss_candidates():
    url = "wss://gw.example.com/ws/a"
    assert check(url, signature="x").signed_url == f"{url} {url}/"
    assert check(url + "/", signature="x").signed_url == url + "/"
    assert check("https://gw.example.com/a", signature="x").signed_url == "https://gw.example.com/a"
    assert check("wss://gw.example.com/ws/a?q=1", signature="x").signed_url == "wss://gw.example.com/ws/a?q=1 wss://gw.example.com/ws/a/?q=1"


def test_wss_accepts_the_signature_over_the_url_with_a_trailing_slash_only_for_wss():
    for scheme, ok in (("wss", True), ("https", False)):
        url = f"{scheme}://gw.example.com/ws/a"
        signature = SDK.compute_signature(url + "/", {})
        assert check(url, form={}, signature=signature).ok is ok, scheme
    query_url = "wss://gw.example.com/ws/a?q=1"
    assert check(query_url, form={}, signature=SDK.compute_signature("wss://gw.example.com/ws/a/?q=1", {})).ok is True


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"signature": None}, "missing X-Twilio-Signature header"),
    ({"signature": ""}, "missing X-Twilio-Signature header"),
    ({"signature": "   "}, "missing X-Twilio-Signature header"),
    ({"signature": "abc", "signature_settings": "key=k1,algorithm=HMAC_MD5"}, "unsupported signature algorithm"),
    ({"signature": "abc", "url": "https://gw.example.com:99999/x"}, "invalid URL"),
    ({"signature": "abc", "url": "ftp://gw.example.com/x"}, "invalid URL"),
    ({"signature": "abc", "url": "https:///x"}, "invalid URL"),
    ({"signature": "abc", "url": "gw.example.com/x"}, "invalid URL"),
    ({"signature": "abc", "url": "https://[::1/x"}, "invalid URL"),
    ({"signature": "abc"}, "signature does not match"),
])
def test_each_refusal_names_its_reason(kwargs, reason):
    url = kwargs.pop("url", GW)
    verdict = check(url, **kwargs)
    assert verdict.ok is False and verdict.reason == reason


def test_no_auth_token_refuses():
    signature = SDK.compute_signature(GW, flat(FORM))
    for token in ("", None):
        verdict = verify_twilio_signature(token, GW, FORM, b"", signature)
        assert verdict.ok is False and verdict.reason == "auth token not configured"


def test_signature_is_stripped_of_surrounding_space():
    signature = SDK.compute_signature(GW, flat(FORM))
    assert check(GW, signature=f"  {signature}\t").ok is True


def test_hmac_sha256_signatures_need_the_settings_header():
    """The SharedKey scheme: `X-Twilio-Webhooks-Signature-Settings` names HMAC-SHA256."""
    signature = SDK.compute_signature(GW, flat(FORM), algorithm=HMAC_SHA256)
    for header in ("key=k1,algorithm=HMAC_SHA256", "key=k1,algorithm=hmac_sha256"):
        assert check(GW, signature=signature, signature_settings=header).ok is True
        assert check(GW, form={"CallSid": ("CA1",)}, signature=SDK.compute_signature(GW, {"CallSid": "CA1"}, algorithm=HMAC_SHA256),
                     signature_settings=header).ok is True  # the SDK's path, not the shortcut
    assert check(GW, signature=signature).ok is False
    sha1 = SDK.compute_signature(GW, flat(FORM))
    assert check(GW, signature=sha1, signature_settings="key=k1,algorithm=HMAC_SHA256").ok is False


# --- bodySHA256 -----------------------------------------------------------------------------


def body_url(body: bytes, base: str = GW) -> str:
    return f"{base}?bodySHA256={hashlib.sha256(body).hexdigest()}"


def test_json_body_covered_by_body_sha256():
    body = b'{"CallSid": "CA1", "CallStatus": "completed"}'
    url = body_url(body)
    signature = SDK.compute_signature(url, {})
    assert check(url, form=None, body=body, signature=signature).ok is True
    assert SDK.validate(url, body.decode(), signature) is True  # the oracle agrees
    tampered = check(url, form=None, body=body + b" ", signature=signature)
    assert tampered.ok is False and tampered.reason == "body does not match bodySHA256"
    assert SDK.validate(url, (body + b" ").decode(), signature) is False


def test_body_sha256_is_checked_even_when_a_form_came_with_it():
    """A form whose signature covers URL + parameters, sent to a URL naming a bodySHA256 that
    the body does not have: the hash decides (the one-HMAC shortcut must not skip it)."""
    form = {"CallSid": ["CA1"]}
    url = f"{GW}?bodySHA256={hashlib.sha256(b'something else').hexdigest()}"
    signature = SDK.compute_signature(url, flat(form))
    verdict = check(url, form=form, body=b"CallSid=CA1", signature=signature)
    assert verdict.ok is False and verdict.reason == "body does not match bodySHA256"


def test_body_sha256_in_the_fragment_is_not_the_query():
    form = {"CallSid": ["CA1"]}
    url = GW + "#bodySHA256=abc"
    assert check(url, form=form, body=b"CallSid=CA1", signature=SDK.compute_signature(url, flat(form))).ok is True


def test_body_that_is_not_utf8_under_body_sha256():
    body = b"\xff\xfe"
    url = body_url(body)
    verdict = check(url, form=None, body=body, signature=SDK.compute_signature(url, {}))
    assert verdict.ok is False and verdict.reason == "body is not valid UTF-8"


def test_a_body_neither_form_nor_hashed_is_refused():
    signature = SDK.compute_signature(GW, {})
    verdict = check(GW, form=None, body=b"{}", signature=signature)
    assert verdict.ok is False and verdict.reason == "body is neither form-encoded nor covered by bodySHA256"
    assert check(GW, form=None, body=b"", signature=signature).ok is True  # GET, WebSocket upgrade


# --- forms of every shape ---------------------------------------------------------------------


def test_repeated_values_follow_the_sdk():
    form = {"A": ["2", "1", "2"], "B": ["x"]}
    signature = SDK.compute_signature(GW, FormData([("A", "2"), ("A", "1"), ("A", "2"), ("B", "x")]))
    assert check(GW, form=form, signature=signature).ok is True
    assert check(GW, form=FormData([("A", "2"), ("A", "1"), ("A", "2"), ("B", "x")]), signature=signature).ok is True
    assert check(GW, form={"A": ["2"], "B": ["x"]}, signature=signature).ok is False


def test_bare_string_and_tuple_values_count_as_values():
    signature = SDK.compute_signature(GW, {"A": "abc", "B": "x"})
    assert check(GW, form={"A": "abc", "B": ("x",)}, signature=signature).ok is True


@pytest.mark.parametrize("form", [{1: ["x"]}, {"A": [1]}, {"A": 5}, {"A": None}])
def test_malformed_form_parameters_are_refused(form):
    verdict = check(GW, form=form, signature="abc")
    assert verdict.ok is False and verdict.reason == "malformed form parameters"


def test_the_one_hmac_shortcut_answers_true_for_the_common_case():
    """`_matches_exactly` is the fast path; its False falls back to the SDK, so only its own
    answers show whether it works."""
    signature = SDK.compute_signature(GW, flat(FORM))
    assert _matches_exactly(TOKEN, GW, FORM, signature, HMAC_SHA1) is True
    assert _matches_exactly(TOKEN, GW, FORM, signature, HMAC_SHA1.lower()) is True
    multi = {"A": ["2", "1", "2"], "B": ["x"]}
    multi_signature = SDK.compute_signature(GW, FormData([("A", "2"), ("A", "1"), ("A", "2"), ("B", "x")]))
    assert _matches_exactly(TOKEN, GW, multi, multi_signature, HMAC_SHA1) is True
    assert _matches_exactly(TOKEN, GW, {"A": ["1", "2"], "B": ["x"]}, multi_signature, HMAC_SHA1) is True  # distinct, sorted
    assert _matches_exactly(TOKEN, GW, {"A": ["2"], "B": ["x"]}, multi_signature, HMAC_SHA1) is False
    assert _matches_exactly(TOKEN, GW, FORM, SDK.compute_signature(GW, flat(FORM), algorithm=HMAC_SHA256), HMAC_SHA256) is True
    assert _matches_exactly(TOKEN, GW, FORM, signature, HMAC_SHA256) is False
    assert _matches_exactly(TOKEN, GW + "/", FORM, signature, HMAC_SHA1) is False
    assert _matches_exactly(TOKEN, GW, {"CallSid": ("CA1",)}, SDK.compute_signature(GW, {"CallSid": "CA1"}), HMAC_SHA1) is False
    assert _matches_exactly(TOKEN, GW, FormData([("CallSid", "CA1")]), SDK.compute_signature(GW, {"CallSid": "CA1"}), HMAC_SHA1) is False
    assert _matches_exactly(TOKEN, GW, {"A": [1]}, signature, HMAC_SHA1) is False
    assert _matches_exactly(TOKEN, GW, {"A": ["\ud800"]}, signature, HMAC_SHA1) is False
    assert _matches_exactly(TOKEN, GW, FORM, signature, "HMAC_MD5") is False


def test_a_signature_that_is_not_even_utf8_is_refused_not_raised():
    assert _matches_exactly(TOKEN, GW, FORM, "\ud800", HMAC_SHA1) is False
    verdict = check(GW, signature="\ud800abc")
    assert verdict.ok is False and verdict.reason == "signature does not match"
