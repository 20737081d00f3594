"""Twilio stream framing: the `media` fast path means exactly what the full JSON parse means."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers import twilio_media
from gateway.providers.twilio_media import StreamMessageError, _parse_json, parse_stream_message, render_media

SID = "MZ" + "1" * 32


def media_text(payload: str, *, track: str = "inbound", sid: str = SID, seq: str = "7") -> str:
    return ('{"event":"media","sequenceNumber":"%s","media":{"track":"%s","chunk":"6","timestamp":"120",'
            '"payload":"%s"},"streamSid":"%s"}') % (seq, track, payload, sid)


def outcome(parse, text):
    try:
        return parse(text)
    except StreamMessageError as exc:
        return ("error", str(exc))


def test_twilio_media_message_takes_the_fast_path_and_decodes():
    audio = bytes(range(160))
    text = media_text(base64.b64encode(audio).decode())
    assert twilio_media._MEDIA.fullmatch(text)
    message = parse_stream_message(text)
    assert (message.event, message.stream_sid, message.track, message.audio) == ("media", SID, "inbound", audio)
    assert message == _parse_json(text)


@pytest.mark.parametrize("text", [
    media_text("!!!notbase64"),
    media_text("QQ="),  # bad padding
    media_text("="),
    media_text("QUJD="),
    media_text("QQ==QQ=="),
    media_text("QUJD", track="outbound"),
    media_text("QUJD", track="Inbound Track"),
    media_text("QUJD", sid="MZ-1"),
    media_text("QUJD", seq="x"),
    media_text("QUJD") + " ",
    media_text("QUJD").replace('"media",', '"media" ,', 1),
    media_text("QUJD").replace("QUJD", "QU\\u004aD"),
    '{"event":"media","media":{"payload":"QUJD"}}',
])
def test_odd_messages_mean_the_same_as_the_full_parse(text):
    assert outcome(parse_stream_message, text) == outcome(_parse_json, text)


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


@settings(max_examples=400, deadline=None)
@given(
    payload=st.one_of(st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()), st.text(_B64, max_size=12),
                      st.text(max_size=12)),
    track=st.sampled_from(["inbound", "outbound", "inbound_track", "", "x" * 40, 'in"bound']),
    sid=st.sampled_from([SID, "", "MZ" + "a" * 70, 'MZ"1']),
    seq=st.sampled_from(["1", "123456789012345", "", "-1"]),
)
def test_fast_path_agrees_with_json(payload, track, sid, seq):
    text = media_text(payload, track=track, sid=sid, seq=seq)
    assert outcome(parse_stream_message, text) == outcome(_parse_json, text)


def test_oversized_message_is_refused_before_parsing():
    with pytest.raises(StreamMessageError, match="over the"):
        parse_stream_message(media_text("A" * 70000))


def test_rendered_media_is_the_documented_message():
    text = render_media(SID, b"\xff" * 160)
    assert json.loads(text) == {"event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}
