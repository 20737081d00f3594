"""Fuzzing the pure parsers that read what a stranger controls: each one either returns its value
or raises its one documented error type, whatever it is given. Fast (no sockets), so these run
the most examples. Examples that once broke a parser are pinned with `@example`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from pathlib import Path

import jwt
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from fuzz_support import json_values, value_or_refusal
from support import VONAGE_SECRET
from gateway.calls.lifecycle import CallUpdate
from gateway.config import ConfigError, load_config, parse_config
from gateway.media.signed_url import check as check_signed_link
from gateway.media.token import check_stream_token, mint_stream_token
from gateway.providers.base import MAX_JSON_DEPTH, BadRequest, Verdict, parse_form, parse_json_object
from gateway.providers.twilio import parse_twilio_callback, verify_twilio_signature
from gateway.providers.twilio_media import StreamMessage, StreamMessageError, parse_stream_message
from gateway.providers.vonage import ReplayGuard, parse_vonage_answer, parse_vonage_event, verify_vonage_jwt
from gateway.providers.vonage_media import VonageEvent, VonageMessageError, parse_vonage_text
from gateway.store.base import StoreError
from gateway.store.paging import decode_cursor, encode_cursor
from gateway.webhooks.policy import parse_retry_after
from gateway.webhooks.templates import Renderer, TemplateError, parse, validate_template

TOKEN = "fuzz-auth-token"

# Field names and values the providers actually use, mixed with anything at all.
TWILIO_NAMES = ["CallSid", "CallStatus", "AnsweredBy", "SequenceNumber", "Direction", "Timestamp", "From", "To", "CallDuration"]
VONAGE_NAMES = ["uuid", "call_uuid", "status", "from", "to", "conversation_uuid", "direction", "timestamp", "duration",
                "from_user", "endpoint_type", "region_url", "headers", "stream_token"]
form_names = st.sampled_from(TWILIO_NAMES) | st.text(max_size=12)
form_values = st.sampled_from(["", "completed", "in-progress", "-1", "007", "1e3", " 12 ", "machine_start",
                               "Mon, 01 Jan 0001 00:00:00 +1400", "Tue, 31 Dec 9999 23:59:59 -1400"]) | st.text(max_size=40)
forms = st.dictionaries(form_names, st.lists(form_values, min_size=0, max_size=3), max_size=8)
vonage_objects = st.dictionaries(st.sampled_from(VONAGE_NAMES) | st.text(max_size=8), json_values, max_size=8)


# --- request bodies -----------------------------------------------------------------------


@given(st.binary(max_size=512) | st.text(max_size=256).map(lambda t: t.encode("utf-8", "surrogatepass")))
@example(b"%ff=1")
@example(b"a=%ED%A0%80")  # a percent-encoded lone surrogate
@example(b"&" * 1000)
def test_parse_form_returns_lists_or_bad_request(raw):
    form = value_or_refusal(BadRequest, parse_form, raw)
    assert form is None or all(isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v) for k, v in form.items())


@given(st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()))
@example(b'{"a": NaN}')
@example(b'{"a": 1e999}')
@example(b"\xef\xbb\xbf{}")
@example(b'{"a": "\\ud800"}')
@example(b"[" * 5000 + b"]" * 5000)
@example(b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1))
@example(b'{"n": ' + b"9" * 5000 + b"}")
def test_parse_json_object_returns_a_dict_or_bad_request(raw):
    value = value_or_refusal(BadRequest, parse_json_object, raw)
    if value is not None:
        json.dumps(value).encode("utf-8")  # what the store will do with it


@given(forms, st.sampled_from(["status", "answer", "amd"]))
@example({"CallSid": ["CA1"], "Timestamp": ["Mon, 01 Jan 0001 00:00:00 +1400"]}, "status")
@example({"CallSid": ["CA1"], "SequenceNumber": ["\u0661"]}, "status")  # an Arabic-Indic digit
@example({"CallSid": ["CA1", "CA2"]}, "status")
def test_twilio_callback_is_an_update_or_bad_request(form, kind):
    update = value_or_refusal(BadRequest, lambda: parse_twilio_callback(form, kind=kind))
    if update is None:
        return
    assert isinstance(update, CallUpdate) and update.provider_call_id
    assert update.sequence is None or update.sequence >= 0
    assert update.duration is None or update.duration >= 0
    json.dumps(update.params)


@given(vonage_objects | json_values)
@example({"uuid": "u", "to": []})
@example({"uuid": "u", "to": [None]})
@example({"uuid": "u", "to": [[]]})
@example({"uuid": "u", "duration": 1e300})  # was stored as a 300-digit int: the store failed (500)
@example({"uuid": "u", "duration": 10**30})
@example({"uuid": "u", "timestamp": "9999-12-31T23:59:59-23:59"})
@example({"uuid": "u", "from": {"type": "phone", "number": 5}})
def test_vonage_event_and_answer_are_updates_or_bad_request(data):
    for parse_one in (parse_vonage_event, parse_vonage_answer):
        update = value_or_refusal(BadRequest, parse_one, data)
        if update is None:
            continue
        assert isinstance(update, CallUpdate) and update.provider_call_id
        assert update.duration is None or 0 <= update.duration < 2**63  # what every store's integer column holds


# --- signatures -----------------------------------------------------------------------------

urls = st.sampled_from(["https://gw.example.com/api/v1/telephony/status-callback/run-1", "wss://gw.example.com/ws/a",
                        "https://user:pw@gw.example.com/x?bodySHA256=abc", "http://[::1]:99999/x", "https://h/p@evil.example/",
                        "https://h/?q=@evil", "ftp://h/", "https://", "://", "https://h:-1/"]) | st.text(max_size=60)


@given(urls, st.none() | forms, st.binary(max_size=64), st.none() | st.text(max_size=40),
       st.none() | st.sampled_from(["HMAC-SHA256", "HMAC-SHA1", "HMAC-MD5", ""]) | st.text(max_size=20))
@example("https://h/x?bodySHA256=%zz", None, b"\xff", "sig", None)
@example("https://h:0/x", {}, b"", "sig", None)
@example("https://h/x", {"a": ["\ud800"]}, b"", "sig", None)
def test_twilio_signature_check_always_gives_a_verdict(url, form, body, signature, settings_header):
    verdict = verify_twilio_signature(TOKEN, url, form, body, signature, signature_settings=settings_header)
    assert isinstance(verdict, Verdict)
    assert TOKEN not in verdict.reason and TOKEN not in verdict.signed_url


path_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"), max_size=20)


@given(path_text, path_text, forms.map(lambda f: {k: v for k, v in f.items() if v}))
@example("/p@other.example/x", "/x", {})
@example("/a", "/a@other.example", {})
def test_a_twilio_signature_only_validates_the_url_it_was_made_for(path, other_path, form):
    """Twilio's own `RequestValidator` signs one URL; the gateway must refuse it for any other
    path (an `@` in the path or query must not move the host)."""
    url = f"https://gw.example.com/{path.lstrip('/')}"
    other = f"https://gw.example.com/{other_path.lstrip('/')}"
    flat = {k: v[0] for k, v in form.items()}
    signature = RequestValidator(TOKEN).compute_signature(url, flat)
    single = {k: [v[0]] for k, v in form.items()}
    assert verify_twilio_signature(TOKEN, url, single, b"", signature).ok
    if other.rstrip("/") != url.rstrip("/") and RequestValidator(TOKEN).compute_signature(other, flat) != signature:
        assert not verify_twilio_signature(TOKEN, other, single, b"", signature).ok


@given(st.none() | st.text(max_size=80) | st.binary(max_size=40).map(lambda b: "Bearer " + base64.urlsafe_b64encode(b).decode()),
       st.binary(max_size=64))
@example("Bearer a.b.c", b"")
@example("Bearer eyJhbGciOiJub25lIn0.e30.", b"")
@example("bearer  x  y", b"")
def test_vonage_jwt_check_always_gives_a_verdict(authorization, body):
    verdict = verify_vonage_jwt(authorization, VONAGE_SECRET, body, now=1_700_000_000, replay=ReplayGuard())
    assert isinstance(verdict, Verdict) and not verdict.ok
    assert VONAGE_SECRET not in verdict.reason


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hs256_token(header: dict, claims: dict) -> str:
    """A JWS signed by hand, so that any header and claims can be put in."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(VONAGE_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


LENIENT = {"verify_signature": True, **{f"verify_{c}": False for c in ("exp", "nbf", "iat", "aud", "iss", "sub", "jti")}}


@given(st.dictionaries(st.sampled_from(["iat", "jti", "payload_hash", "api_key", "application_id"]) | st.text(max_size=6),
                       json_values | st.integers(min_value=-(2**80), max_value=2**80), max_size=6),
       st.binary(max_size=32), st.dictionaries(st.sampled_from(["alg", "typ", "kid"]), json_values, max_size=2))
@example({"iat": 2**70, "jti": "j"}, b"", {})
@example({"iat": True, "jti": "j"}, b"", {})
@example({"iat": 1_700_000_000, "jti": ["j"]}, b"", {})
def test_signed_vonage_jwt_with_any_claims_gives_a_verdict(claims, body, extra_headers):
    """A correctly signed token with arbitrary claims and header fields."""
    token = hs256_token({**extra_headers, "alg": "HS256"}, claims)
    verdict = verify_vonage_jwt(f"Bearer {token}", VONAGE_SECRET, body, now=1_700_000_000, replay=ReplayGuard())
    assert isinstance(verdict, Verdict)
    if verdict.ok:  # PyJWT, the independent oracle, reads the same claims from the token
        assert jwt.decode(token, VONAGE_SECRET, algorithms=["HS256"], options=LENIENT) == dict(verdict.claims) == claims
        iat = claims["iat"]
        assert not isinstance(iat, bool) and math.isfinite(iat) and abs(iat - 1_700_000_000) <= 300
        assert isinstance(claims.get("jti"), str) and claims["jti"]
        if body:
            assert claims["payload_hash"].strip().lower() == hashlib.sha256(body).hexdigest()


@given(st.binary(max_size=32), st.text(max_size=20), st.none() | st.integers() | st.text(max_size=40) | st.binary(max_size=10),
       st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
@example(b"k", "run", "v2.00000000001.x", 0.0)
@example(b"k", "run", "v2.\u0661\u0662.x", 0.0)  # non-ASCII digits
@example(b"k", "run", "v2.\u00b2.x", 0.0)  # "²".isdigit() but int("²") raised ValueError
@example(b"k", "run", "v2.1.\u00e9", 0.0)  # hmac.compare_digest raised TypeError on a non-ASCII str
def test_stream_token_check_is_none_or_a_reason(key, run_id, token, now):
    result = check_stream_token(key, run_id, token, now=now, workflow_id="wf", user_id="user")
    assert result is None or isinstance(result, str)
    if result is None:
        expires = int(token.split(".")[1])  # only the token minted for this run passes
        assert token == mint_stream_token(key, run_id, now=expires, ttl=0, workflow_id="wf", user_id="user") and expires >= now


# --- media socket messages ------------------------------------------------------------------

twilio_events = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "other"])
twilio_messages = st.builds(
    lambda event, body, extra: json.dumps({"event": event, **extra, event: body}),
    twilio_events, json_values, st.dictionaries(st.sampled_from(["streamSid", "sequenceNumber"]), json_values, max_size=2),
)


@given(twilio_messages | st.text(max_size=200))
@example('{"event":"media","sequenceNumber":"1","media":{"track":"inbound","chunk":"1","timestamp":"20","payload":"a"},"streamSid":"MZ1"}')
@example('{"event":"media","media":{"payload":"===="},"streamSid":"MZ1"}')
@example('{"event":"start","start":{"streamSid":"MZ1","customParameters":{"a":1}}}')
@example('{"event":"dtmf","dtmf":{"digit":null}}')
@example("[" * 10000)
def test_twilio_stream_message_is_a_message_or_its_error(text):
    message = value_or_refusal(StreamMessageError, parse_stream_message, text)
    assert message is None or (isinstance(message, StreamMessage) and isinstance(message.event, str))


vonage_text = st.builds(lambda event, extra: json.dumps({"event": event, **extra}),
                        st.sampled_from(["websocket:connected", "websocket:dtmf", "websocket:media:update", "x"]),
                        st.dictionaries(st.sampled_from(["content-type", "digit", "duration"]) | st.text(max_size=5), json_values, max_size=3))


@given(vonage_text | st.text(max_size=200))
@example('{"event":"websocket:connected","content-type":"audio/l16;rate=16000\\n"}')
@example("[" * 10000)
def test_vonage_text_message_is_an_event_or_its_error(text):
    event = value_or_refusal(VonageMessageError, parse_vonage_text, text)
    assert event is None or (isinstance(event, VonageEvent) and event.sample_rate in (None, 8000, 16000, 24000))


# --- pagination cursors, templates, config --------------------------------------------------


@given(st.text(max_size=80) | st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
       | json_values.map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode()))
@example("W10")  # []
@example(base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00"]').decode())
@example(base64.urlsafe_b64encode(b'{"a": 1}').decode())
@example("\u00e9")
def test_cursor_decodes_or_is_a_store_error(cursor):
    decoded = value_or_refusal(StoreError, decode_cursor, cursor)
    assert decoded is None or decode_cursor(encode_cursor(*decoded)) == decoded


template_text = st.text(alphabet=st.sampled_from(list("{}|()\"',.: abcx0_-$\\")), max_size=40) | st.text(max_size=30)
roots = {"call": {"state": "answered", "from": "+1555", "n": [1, {"x": None}]}, "event": {"type": "call.ended"}}


@given(template_text, json_values)
@example("{{", None)
@example("{{ call.n.1.x | default('a') }}", None)
@example("{{ secrets.missing }}", None)
@example('{{ call.state | default("}}") }}', None)
@example("{{ call.n.99999999999999999999 }}", None)
@example("{{ call.n." + "9" * 5000 + " }}", None)  # int() of 4300+ digits raised ValueError
def test_templates_render_or_raise_template_error(template, value):
    renderer = Renderer({**roots, "data": value}, {"token": "s3cret"})
    value_or_refusal(TemplateError, parse, template)
    value_or_refusal(TemplateError, validate_template, template, ["call", "event", "data", "secrets"])
    for render in (renderer.text, renderer.url, renderer.value):
        value_or_refusal(TemplateError, render, template)


config_keys = st.sampled_from(["listen", "store", "public_url", "providers", "agent", "webhooks", "secrets", "limits",
                               "delivery", "log", "tunnel", "dial", "workflows", "stream_token_ttl", "data_dir"])


@settings(max_examples=40)
@given(st.dictionaries(config_keys | st.text(max_size=6), json_values, max_size=4) | json_values)
@example({"webhooks": [{"name": "a", "url": "{{", "events": ["call.ended"]}]})
@example({"webhooks": [None]})
@example({"providers": {"twilio": {"auth_token": 5}}})
@example({"public_url": "${NOPE}"})
@example({"listen": {"port": 10**30}})
@example({"workflows": [{"path": "/nonexistent/file.json"}]})
def test_config_data_is_a_config_or_config_error(data):
    value_or_refusal(ConfigError, lambda: parse_config(data, env={}))


@settings(max_examples=25)
@given(st.text(max_size=200) | st.binary(max_size=100).map(lambda b: b.decode("latin-1")))
@example("listen: {port: [1, 2]}\n")
@example("&a [*a]")
@example("!!python/object:os.system {}")
@example("a: !!binary ====")
def test_config_file_is_a_config_or_config_error(tmp_path_factory, text):
    path = Path(tmp_path_factory.mktemp("cfg")) / "gateway.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    value_or_refusal(ConfigError, lambda: load_config(path, env={}))


@given(st.none() | st.text(max_size=40), st.none() | st.text(max_size=40))
@example("\u00b2", "sig")  # "²".isdigit() but int("²") raised ValueError: a 500 for a recording link
@example("\u0661", "sig")
def test_signed_media_link_check_is_none_or_a_reason(expires, signature):
    result = check_signed_link(b"k", "recording", "run-1", expires, signature, now=0)
    assert isinstance(result, str)  # nothing but a link this key signed passes


@given(st.none() | st.text(max_size=40) | st.sampled_from(["\u00b2", "9" * 5000, "Wed, 21 Oct 2015 07:28:00 GMT", "-1", "1.5"]),
       st.floats(min_value=0, max_value=4e9))
@example("\u00b2", 0.0)  # a webhook receiver's Retry-After: float("²") raised ValueError
def test_retry_after_from_a_receiver_is_seconds_or_none(value, now):
    delay = parse_retry_after(value, now)
    assert delay is None or delay >= 0
