"""Telnyx's pure protocol logic: Ed25519 signatures against the telnyx SDK, TeXML callbacks and
answers, and the media-stream messages (fuzzed)."""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature

from support import telnyx_headers, telnyx_public_key
from gateway.calls.states import CallState
from gateway.providers.base import BadRequest
from gateway.providers.media_json import MediaMessage
from gateway.providers.telnyx import (
    PublicKeyError,
    load_public_key,
    parse_telnyx_callback,
    render_connect_texml,
    verify_telnyx_signature,
)
from gateway.providers.telnyx_media import TelnyxMessageError, parse_telnyx_message, render_mark, render_media

PUBLIC = telnyx_public_key()
OTHER_PUBLIC = telnyx_public_key(bytes(32))


def sdk_accepts(body: bytes, headers: dict[str, str], key: str = PUBLIC) -> bool:
    """The telnyx SDK's own verdict (it reads the wall clock)."""
    try:
        verify_webhook_signature(body, headers, key)
    except WebhookVerificationError:
        return False
    return True


def ours(body: bytes, headers: dict[str, str], key: str = PUBLIC, now: float | None = None) -> bool:
    return verify_telnyx_signature(key, body, headers.get("telnyx-signature-ed25519"), headers.get("telnyx-timestamp"),
                                   now=time.time() if now is None else now).ok


# --- signatures -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(body=st.text(max_size=300).map(str.encode), skew=st.integers(-280, 280))
def test_signed_bodies_are_accepted_exactly_when_the_sdk_accepts_them(body, skew):
    headers = telnyx_headers(body, timestamp=int(time.time()) + skew)
    assert ours(body, headers) and sdk_accepts(body, headers)


@settings(max_examples=60, deadline=None)
@given(body=st.text(min_size=1, max_size=200).map(str.encode), flip=st.integers(0, 10_000))
def test_a_changed_body_is_refused_by_both(body, flip):
    headers = telnyx_headers(body)
    index = flip % len(body)
    tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1:]
    try:
        tampered.decode("utf-8")
    except UnicodeDecodeError:
        return  # the SDK only takes text bodies
    assert not ours(tampered, headers) and not sdk_accepts(tampered, headers)


def test_wrong_key_stale_and_future_timestamps_and_malformed_headers_are_refused_by_both():
    body = b"CallSid=v3%3Aabc&CallStatus=ringing"
    assert not ours(body, telnyx_headers(body), key=OTHER_PUBLIC) and not sdk_accepts(body, telnyx_headers(body), OTHER_PUBLIC)
    for skew in (-301, 301, -10_000):
        headers = telnyx_headers(body, timestamp=int(time.time()) + skew)
        assert not ours(body, headers) and not sdk_accepts(body, headers)
    good = telnyx_headers(body)
    for bad in ({"telnyx-timestamp": good["telnyx-timestamp"]},
                {"telnyx-signature-ed25519": good["telnyx-signature-ed25519"]},
                {**good, "telnyx-signature-ed25519": "not base64!"},
                {**good, "telnyx-signature-ed25519": base64.b64encode(b"x" * 63).decode()},
                {**good, "telnyx-timestamp": "12.5"},
                {**good, "telnyx-timestamp": str(int(good["telnyx-timestamp"]) + 1)}):
        assert not ours(body, bad) and not sdk_accepts(body, bad)


def test_the_clock_is_injected_and_the_tolerance_is_the_sdks():
    body = b"x=1"
    headers = telnyx_headers(body, timestamp=1_000_000)
    check = lambda now: verify_telnyx_signature(PUBLIC, body, headers["telnyx-signature-ed25519"], "1000000", now=now)
    assert check(1_000_300).ok and check(999_700).ok
    assert check(1_000_301).reason == "timestamp outside the 300 s tolerance"
    assert not check(999_699).ok


def test_reasons_name_the_problem_and_never_the_key():
    verdict = verify_telnyx_signature(PUBLIC, b"", None, "1", now=1)
    assert verdict.reason == "missing telnyx-signature-ed25519 header"
    verdict = verify_telnyx_signature(PUBLIC, b"a", telnyx_headers(b"b")["telnyx-signature-ed25519"], str(int(time.time())),
                                      now=time.time())
    assert verdict.reason == "signature does not match" and PUBLIC not in verdict.reason


def test_public_keys_are_checked():
    load_public_key(PUBLIC)
    for bad in ("", "abc", base64.b64encode(b"x" * 31).decode()):
        with pytest.raises(PublicKeyError):
            load_public_key(bad)
    assert not verify_telnyx_signature("bad key", b"", "x", "1", now=1).ok


# --- TeXML callbacks ----------------------------------------------------------------------------


def form(**fields):
    return {k: [v] for k, v in fields.items()}


def test_texml_status_callbacks_map_through_telnyxs_row():
    sid = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"
    for word, state in (("initiated", CallState.INITIATED), ("ringing", CallState.RINGING),
                        ("in-progress", CallState.ANSWERED), ("completed", CallState.COMPLETED), ("busy", CallState.BUSY),
                        ("no-answer", CallState.NO_ANSWER), ("canceled", CallState.CANCELED), ("failed", CallState.FAILED),
                        ("stream-started", None)):
        update = parse_telnyx_callback(form(CallSid=sid, CallStatus=word, From="+1312", To="+1313", Direction="outbound",
                                            SequenceNumber="3", CallDuration="7", Timestamp="2026-12-07T10:00:00Z"))
        assert update.provider == "telnyx" and update.provider_call_id == sid and update.state == state
        assert update.direction == "outbound" and update.sequence == 3 and update.duration == 7
        assert update.occurred_at.isoformat() == "2026-12-07T10:00:00+00:00"


def test_answering_machine_results_mark_voicemail():
    assert parse_telnyx_callback(form(CallSid="v3:a", AnsweredBy="machine")).voicemail is True
    assert parse_telnyx_callback(form(CallSid="v3:a", AnsweredBy="machine_end_beep")).voicemail is True
    assert parse_telnyx_callback(form(CallSid="v3:a", AnsweredBy="human")).voicemail is False
    assert parse_telnyx_callback(form(CallSid="v3:a", AnsweredBy="not_sure")).voicemail is None


@pytest.mark.parametrize("fields, reason", [
    ({}, "missing CallSid"),
    (form(CallSid="v3:" + "a" * 200), "CallSid is not a valid identifier"),
    (form(CallSid="has space"), "CallSid is not a valid identifier"),
    (form(CallSid="v3:a", SequenceNumber="-1"), "SequenceNumber is not a non-negative integer"),
    ({"CallSid": ["v3:a", "v3:b"]}, "conflicting values for CallSid"),
])
def test_malformed_callbacks_are_bad_requests(fields, reason):
    with pytest.raises(BadRequest, match=reason):
        parse_telnyx_callback(fields)


# --- the answer ---------------------------------------------------------------------------------


def test_the_answer_is_a_bidirectional_rtp_connect_stream_with_the_token_as_a_parameter():
    xml = render_connect_texml("wss://gw.example.com/api/v1/telephony/ws/wf/u/run", {"stream_token": "v1.9.abc", "user_id": "u"})
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')
    stream = ET.fromstring(xml).find("./Connect/Stream")
    assert stream.attrib == {"url": "wss://gw.example.com/api/v1/telephony/ws/wf/u/run", "track": "inbound_track",
                             "codec": "PCMU", "bidirectionalMode": "rtp", "bidirectionalCodec": "PCMU",
                             "bidirectionalSamplingRate": "8000"}
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == {"stream_token": "v1.9.abc", "user_id": "u"}
    assert ET.fromstring(render_connect_texml("wss://h/x", {}, codec="PCMA")).find("./Connect/Stream").get("bidirectionalCodec") == "PCMA"


@pytest.mark.parametrize("url, codec", [("ws://h/x", "PCMU"), ("https://h/x", "PCMU"), ("wss://h/x", "G722"), ("wss://h/\x00", "PCMU")])
def test_bad_answers_are_refused(url, codec):
    with pytest.raises(ValueError):
        render_connect_texml(url, {}, codec=codec)
    assert render_connect_texml("ws://h/x", {}, allow_insecure=True)


# --- media messages ------------------------------------------------------------------------------

STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"


def test_documented_messages_parse():
    assert parse_telnyx_message('{"event":"connected","version":"1.0.0"}').event == "connected"
    start = parse_telnyx_message(json.dumps({
        "event": "start", "sequence_number": "1", "stream_id": STREAM,
        "start": {"user_id": "u", "call_control_id": "v3:abc", "call_session_id": "s", "from": "+1", "to": "+2",
                  "custom_parameters": {"stream_token": "v1.1.x", "n": 3},
                  "media_format": {"encoding": "PCMA", "sample_rate": 8000, "channels": 1}}}))
    assert start == MediaMessage("start", STREAM, call_id="v3:abc", encoding="alaw", sample_rate=8000,
                                 parameters={"stream_token": "v1.1.x", "n": "3"})
    media = parse_telnyx_message(json.dumps({"event": "media", "sequence_number": "4", "stream_id": STREAM, "media": {
        "track": "inbound", "chunk": "2", "timestamp": "5", "payload": base64.b64encode(b"\x01" * 160).decode()}}))
    assert media.audio == b"\x01" * 160 and media.track == "inbound"
    assert parse_telnyx_message(json.dumps({"event": "dtmf", "stream_id": STREAM, "dtmf": {"digit": "#"}})).digit == "#"
    assert parse_telnyx_message(json.dumps({"event": "mark", "stream_id": STREAM, "mark": {"name": "m1"}})).name == "m1"
    assert parse_telnyx_message(json.dumps({"event": "stop", "stream_id": STREAM, "stop": {"call_control_id": "v3"}})).event == "stop"
    error = parse_telnyx_message(json.dumps({"event": "error", "payload": {"code": 100003, "title": "malformed_frame"}}))
    assert "malformed_frame" in error.name


def test_rendered_messages_are_the_documented_shapes():
    assert json.loads(render_media(b"\xff" * 160)) == {"event": "media", "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}
    assert json.loads(render_mark("a\"b")) == {"event": "mark", "mark": {"name": "a\"b"}}


@pytest.mark.parametrize("text, reason", [
    ("not json", "not valid JSON"),
    ("[1]", "message must be an object"),
    ('{"event": 3}', "no event name"),
    ('{"event":"media","media":{"payload":"@@"}}', "not valid base64"),
    ('{"event":"media","media":{}}', "media.payload must be a base64 string"),
    ('{"event":"media"}', "media must be an object"),
    ('{"event":"start","start":{}}', "start has no stream_id"),
    ('{"event":"start","stream_id":"s","start":{"media_format":{"encoding":"OPUS"}}}', "is not PCMU or PCMA"),
    ('{"event":"start","stream_id":"s","start":{"media_format":{"encoding":"PCMU","sample_rate":16000}}}', "sample_rate must be 8000"),
    ('{"event":"dtmf","dtmf":{"digit":"12"}}', "dtmf.digit"),
    ('{"event":"mark","mark":{"name":5}}', "mark.name must be a string"),
    ('{"event":"start","stream_id":7}', "stream_id must be a string"),
    ("x" * 70_000, "over the 65536 limit"),
])
def test_malformed_messages_raise_the_documented_error(text, reason):
    with pytest.raises(TelnyxMessageError, match=reason):
        parse_telnyx_message(text)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(event=st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "error", "other"]),
       body=st.dictionaries(st.sampled_from(["stream_id", "start", "media", "dtmf", "mark", "payload", "stop"]), json_values, max_size=4))
def test_fuzzed_messages_parse_or_raise_the_documented_error(event, body):
    try:
        parsed = parse_telnyx_message(json.dumps({"event": event, **body}))
    except TelnyxMessageError:
        return
    assert parsed.event == event


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_fuzzed_text_parses_or_raises_the_documented_error(text):
    try:
        parse_telnyx_message(text)
    except TelnyxMessageError:
        pass


field_text = st.text(max_size=40)


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["CallSid", "CallStatus", "SequenceNumber", "Timestamp", "CallDuration",
                                               "AnsweredBy", "Direction", "From", "To"]) | field_text,
                              st.lists(field_text, min_size=1, max_size=3), max_size=8))
def test_fuzzed_callbacks_parse_or_raise_bad_request(fields):
    try:
        update = parse_telnyx_callback(fields)
    except BadRequest:
        return
    assert update.provider == "telnyx" and update.provider_call_id


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64), signature=st.none() | st.text(max_size=100), timestamp=st.none() | st.text(max_size=20))
def test_fuzzed_signature_headers_never_crash_and_never_pass(body, signature, timestamp):
    assert not verify_telnyx_signature(PUBLIC, body, signature, timestamp, now=time.time()).ok


def test_a_lone_surrogate_is_the_documented_error():
    # json.loads lets a \ud800 escape through; the store could not write it (stream_id is stored)
    with pytest.raises(TelnyxMessageError, match="lone surrogate"):
        parse_telnyx_message('{"event":"start","stream_id":"\\ud800","start":{}}')
