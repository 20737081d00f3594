"""Plivo's pure protocol logic: V3 signatures against the plivo SDK's `validate_v3_signature`,
callbacks, the `<Stream>` answer against the SDK's XML, and the stream messages (fuzzed)."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plivo import plivoxml
from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3, validate_v3_signature

from gateway.calls.states import CallState
from gateway.providers.base import BadRequest
from gateway.providers.media_json import MediaMessage
from gateway.providers.plivo import (
    decode_token,
    encode_token,
    parse_plivo_callback,
    render_stream_xml,
    signature_v3,
    signed_base,
    verify_plivo_signature,
)
from gateway.providers.plivo_media import (
    PlivoMessageError,
    parse_extra_headers,
    parse_plivo_message,
    render_checkpoint,
    render_clear,
    render_play_audio,
)

TOKEN = "test-plivo-auth-token"
URL = "https://gw.example.com/api/v1/telephony/status-callback/run-1"


def sdk_signature(method, url, form, nonce, token=TOKEN):
    base = construct_get_url(url, {}) if method == "GET" else construct_post_url(url, {k: v[0] if len(v) == 1 else v
                                                                                       for k, v in form.items()})
    return get_signature_v3(token.encode(), base.decode(), nonce.encode()).decode()


def sdk_accepts(method, url, form, nonce, signature, token=TOKEN):
    params = {k: v[0] if len(v) == 1 else v for k, v in (form or {}).items()}
    return validate_v3_signature(method, url, nonce, token, signature, params if method == "POST" else None)


names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="&=#%+"), min_size=1, max_size=12)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2ff, exclude_characters="&=#%+"), max_size=20)
forms = st.dictionaries(names, st.lists(values, min_size=1, max_size=3), max_size=6)
queries = st.dictionaries(st.text("abcxyz", min_size=1, max_size=4), st.text("0123abc", max_size=4), max_size=3)


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(["GET", "POST"]), form=forms, query=queries, nonce=st.text("0123456789", min_size=1, max_size=20))
def test_our_signature_is_the_sdks_and_each_accepts_the_other(method, form, query, nonce):
    url = URL + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    form = form if method == "POST" else {}
    ours = signature_v3(TOKEN, method, url, form, nonce)
    assert ours == sdk_signature(method, url, form, nonce)
    assert sdk_accepts(method, url, form, nonce, ours)
    assert verify_plivo_signature(TOKEN, method, [url], form, [ours], nonce).ok


def test_worked_examples_of_the_reference():
    assert signed_base("GET", "https://example.com/abcd?foo=bar", {}) == "https://example.com/abcd?foo=bar"
    assert signed_base("POST", "https://example.com/abcd?foo=bar", {"CallUUID": ["x"], "To": ["+1"], "From": ["+2"]}) == \
        "https://example.com/abcd?foo=bar.CallUUIDxFrom+2To+1"
    assert signed_base("POST", "https://example.com/abcd", {"CallUUID": ["x"], "To": ["+1"]}) == "https://example.com/abcd?CallUUIDxTo+1"
    assert signed_base("POST", "https://example.com/abcd", {}) == "https://example.com/abcd"


def test_refusals_agree_with_the_sdk_and_name_the_problem():
    form = {"CallUUID": ["abc"], "CallStatus": ["ringing"]}
    good = signature_v3(TOKEN, "POST", URL, form, "123")
    cases = [
        (URL, {**form, "CallStatus": ["completed"]}, "123", good),  # a changed field
        (URL + "?x=1", form, "123", good),  # another URL
        (URL, form, "124", good),  # another nonce
        (URL, form, "123", signature_v3("other-token", "POST", URL, form, "123")),
    ]
    for url, fields, nonce, signature in cases:
        verdict = verify_plivo_signature(TOKEN, "POST", [url], fields, [signature], nonce)
        assert verdict.reason == "signature does not match" and TOKEN not in verdict.signed_url
        assert not sdk_accepts("POST", url, fields, nonce, signature)
    assert verify_plivo_signature(TOKEN, "POST", [URL], form, [None, None], "1").reason == "missing X-Plivo-Signature-V3 header"
    assert verify_plivo_signature(TOKEN, "POST", [URL], form, [good], None).reason == "missing X-Plivo-Signature-V3-Nonce header"


def test_several_signatures_in_a_header_and_the_main_account_header():
    form = {"CallUUID": ["abc"]}
    good = signature_v3(TOKEN, "POST", URL, form, "9")
    assert verify_plivo_signature(TOKEN, "POST", [URL], form, [f"old,{good}"], "9").ok
    assert sdk_accepts("POST", URL, form, "9", f"old,{good}")
    assert verify_plivo_signature(TOKEN, "POST", [URL], form, [None, good], "9").ok  # only X-Plivo-Signature-Ma-V3


def test_the_upgrade_is_checked_over_either_spelling_of_its_url():
    wss = "wss://gw.example.com/api/v1/telephony/ws/wf/u/run"
    https = "https://gw.example.com/api/v1/telephony/ws/wf/u/run"
    signed_over_https = signature_v3(TOKEN, "GET", https, None, "5")
    assert sdk_accepts("GET", https, None, "5", signed_over_https)
    assert verify_plivo_signature(TOKEN, "GET", [wss, https], None, [signed_over_https], "5").ok
    assert not verify_plivo_signature(TOKEN, "GET", [wss], None, [signed_over_https], "5").ok


# --- callbacks ----------------------------------------------------------------------------------


def form(**fields):
    return {k: [v] for k, v in fields.items()}


def test_callbacks_map_through_plivos_row():
    for word, state in (("ringing", CallState.RINGING), ("in-progress", CallState.ANSWERED),
                        ("completed", CallState.COMPLETED), ("busy", CallState.BUSY), ("failed", CallState.FAILED),
                        ("timeout", CallState.NO_ANSWER), ("no-answer", CallState.NO_ANSWER), ("cancel", CallState.CANCELED),
                        ("queued", None)):
        update = parse_plivo_callback(form(CallUUID="c-1", CallStatus=word, From="14155550100", To="14155550199",
                                           Direction="outbound", Duration="12", HangupCause="NORMAL_CLEARING"))
        assert (update.provider, update.provider_call_id, update.state) == ("plivo", "c-1", state)
        assert update.duration == 12 and update.direction == "outbound" and update.sequence is None


def test_machine_detection_marks_voicemail():
    machine = parse_plivo_callback(form(CallUUID="c-1", Machine="true", Event="MachineDetection", CallStatus="in-progress"))
    assert machine.kind == "amd" and machine.voicemail is True and machine.answered_by == "machine"
    human = parse_plivo_callback(form(CallUUID="c-1", Machine="false"))
    assert human.voicemail is False and human.answered_by == "human"


@pytest.mark.parametrize("fields, reason", [
    ({}, "missing CallUUID"),
    (form(CallUUID="x" * 65), "CallUUID is not a valid identifier"),
    (form(CallUUID="a b"), "CallUUID is not a valid identifier"),
    ({"CallUUID": ["a", "b"]}, "conflicting values for CallUUID"),
    (form(CallUUID="a", From="x" * 2000), "From too long"),
])
def test_malformed_callbacks_are_bad_requests(fields, reason):
    with pytest.raises(BadRequest, match=reason):
        parse_plivo_callback(fields)


# --- the answer -----------------------------------------------------------------------------------


def test_the_answer_is_the_sdks_stream_element():
    url = "wss://gw.example.com/api/v1/telephony/ws/wf/u/run"
    ours = ET.fromstring(render_stream_xml(url, "v1.99.abc-_"))
    sdk = plivoxml.ResponseElement()
    sdk.add(plivoxml.StreamElement(content=url, bidirectional=True, audioTrack="inbound", keepCallAlive=True,
                                   contentType="audio/x-mulaw;rate=8000", extraHeaders="streamtoken=" + encode_token("v1.99.abc-_")))
    theirs = ET.fromstring(sdk.to_string(False))
    assert (ours.tag, ours[0].tag, ours[0].attrib, ours[0].text) == (theirs.tag, theirs[0].tag, theirs[0].attrib, theirs[0].text)
    header = ours[0].get("extraHeaders").split("=", 1)[1]
    assert header.isalnum() and decode_token(header) == "v1.99.abc-_"


@pytest.mark.parametrize("url", ["ws://h/x", "https://h/x", "wss://h/a b", "wss://h/" + "x" * 2048, "wss://h/\x01"])
def test_bad_stream_urls_are_refused(url):
    with pytest.raises(ValueError):
        render_stream_xml(url, "t")


# --- stream messages --------------------------------------------------------------------------------

SID = "b77e037d-4119-44b5-902d-25826b654539"


def test_documented_messages_parse():
    start = parse_plivo_message(json.dumps({
        "event": "start", "sequenceNumber": 1,
        "start": {"callId": "c-1", "streamId": SID, "accountId": "MA1", "tracks": ["inbound"],
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
        "extra_headers": f"userId=12345;streamtoken={encode_token('v1.1.x')}"}))
    assert start == MediaMessage("start", SID, call_id="c-1", encoding="mulaw", sample_rate=8000,
                                 parameters={"userId": "12345", "stream_token": "v1.1.x"})
    media = parse_plivo_message(json.dumps({"event": "media", "sequenceNumber": 42, "streamId": SID, "media": {
        "track": "inbound", "timestamp": "1705312200000", "chunk": 41, "payload": base64.b64encode(b"\x7f" * 160).decode()},
        "extra_headers": "userId=1"}))
    assert media.audio == b"\x7f" * 160 and media.track == "inbound"
    dtmf = parse_plivo_message(json.dumps({"event": "dtmf", "streamId": SID, "dtmf": {"track": "inbound", "digit": "5",
                                                                                    "timestamp": "1705312250000"}}))
    assert dtmf.digit == "5"
    for name in ("playedStream", "played"):
        assert parse_plivo_message(json.dumps({"event": name, "streamId": SID, "name": "m1"})) == \
            MediaMessage("playedStream", SID, name="m1")
    assert parse_plivo_message(json.dumps({"event": "clearedAudio", "sequenceNumber": 80, "streamId": SID})).event == "clearedAudio"


def test_extra_headers_in_either_separator():
    assert parse_extra_headers("test1=12,test2=123") == {"test1": "12", "test2": "123"}
    assert parse_extra_headers("userId=12345;sessionId=abc-xyz") == {"userId": "12345", "sessionId": "abc-xyz"}
    assert parse_extra_headers(None) == {} and parse_extra_headers("junk") == {}


def test_rendered_messages_are_the_documented_shapes():
    assert json.loads(render_play_audio(b"\xff" * 160)) == {"event": "playAudio", "media": {
        "contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": base64.b64encode(b"\xff" * 160).decode()}}
    assert json.loads(render_checkpoint(SID, "m1")) == {"event": "checkpoint", "streamId": SID, "name": "m1"}
    assert json.loads(render_clear(SID)) == {"event": "clearAudio", "streamId": SID}


@pytest.mark.parametrize("text, reason", [
    ("{", "not valid JSON"),
    ('"start"', "message must be an object"),
    ('{"event": null}', "no event name"),
    ('{"event":"start","start":{}}', "start has no streamId"),
    ('{"event":"start","start":{"streamId":"s","mediaFormat":{"encoding":"audio/x-l16","sampleRate":16000}}}', "is not audio/x-mulaw"),
    ('{"event":"start","start":{"streamId":"s","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":16000}}}', "sampleRate must be 8000"),
    ('{"event":"start","start":{"streamId":"s"},"extra_headers":5}', "extra_headers must be a string"),
    ('{"event":"media","media":{"payload":"!!"}}', "not valid base64"),
    ('{"event":"dtmf","dtmf":{"digit":"E"}}', "dtmf.digit"),
    ('{"event":"playedStream","name":3}', "playedStream.name must be a string"),
    ('{"event":"media","streamId":[],"media":{}}', "streamId must be a string"),
])
def test_malformed_messages_raise_the_documented_error(text, reason):
    with pytest.raises(PlivoMessageError, match=reason):
        parse_plivo_message(text)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(event=st.sampled_from(["start", "media", "dtmf", "playedStream", "played", "clearedAudio", "stop", "x"]),
       body=st.dictionaries(st.sampled_from(["streamId", "start", "media", "dtmf", "name", "extra_headers"]), json_values, max_size=4))
def test_fuzzed_messages_parse_or_raise_the_documented_error(event, body):
    try:
        parsed = parse_plivo_message(json.dumps({"event": event, **body}))
    except PlivoMessageError:
        return
    assert parsed.event in (event, "playedStream")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_fuzzed_text_parses_or_raises_the_documented_error(text):
    try:
        parse_plivo_message(text)
    except PlivoMessageError:
        pass


def test_a_bare_string_value_is_one_value():
    assert signed_base("POST", URL, {"To": "+14155"}) == signed_base("POST", URL, {"To": ["+14155"]}) == URL + "?To+14155"


field_text = st.text(max_size=40)


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["CallUUID", "CallStatus", "Machine", "Duration", "Direction", "From", "To"])
                              | field_text, st.lists(field_text, min_size=1, max_size=3), max_size=8))
def test_fuzzed_callbacks_parse_or_raise_bad_request(fields):
    try:
        update = parse_plivo_callback(fields)
    except BadRequest:
        return
    assert update.provider == "plivo" and update.provider_call_id


@settings(max_examples=200, deadline=None)
@given(url=st.text(max_size=60), signature=st.none() | st.text(max_size=60), nonce=st.none() | st.text(max_size=30),
       form=st.none() | forms)
def test_fuzzed_requests_never_crash_and_never_pass(url, signature, nonce, form):
    assert not verify_plivo_signature(TOKEN, "POST", [url], form, [signature], nonce).ok


def test_a_lone_surrogate_is_the_documented_error():
    with pytest.raises(PlivoMessageError, match="lone surrogate"):
        parse_plivo_message('{"event":"start","start":{"streamId":"\\udfff"}}')
