"""The REST dialing modules drive the real `twilio` and `vonage` SDKs against local stand-ins
of the providers' APIs; the tests check the exact requests the SDKs sent."""

from __future__ import annotations

import base64
import threading
import time
from datetime import datetime, timezone

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dial.fakes import FakeTwilio, FakeVonage
from gateway.providers.rest import DialSpec, ProviderCall, ProviderRefused
from gateway.providers.twilio_rest import TwilioRest, create_call_params
from gateway.providers.vonage import render_connect_ncco
from gateway.providers.vonage_rest import PrivateKeyError, VonageRest, load_private_key
from support import TWILIO_SID, TWILIO_TOKEN, free_port

SPEC = DialSpec(to="+14155550100", from_="+14155550199", answer_url="https://gw.example.com/api/v1/telephony/webhook/w/u/r1",
                status_url="https://gw.example.com/api/v1/telephony/status-callback/r1")


@pytest.fixture(scope="module")
def rsa_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    pkcs1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return {"pkcs8": pkcs8, "pkcs1": pkcs1, "public": public}


# -- Twilio ------------------------------------------------------------------------------------

def test_twilio_create_sends_the_gateway_urls_and_all_status_events():
    with FakeTwilio() as fake:
        rest = TwilioRest(TWILIO_SID, TWILIO_TOKEN, api_base_url=fake.url)
        result = rest.create_call(SPEC)
    (sent,) = fake.of("create")
    assert sent["path"] == f"/2010-04-01/Accounts/{TWILIO_SID}/Calls.json"
    assert sent["body"] == {
        "To": ["+14155550100"], "From": ["+14155550199"], "Url": [SPEC.answer_url], "Method": ["POST"],
        "StatusCallback": [SPEC.status_url], "StatusCallbackMethod": ["POST"],
        "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
    }
    expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    assert sent["headers"]["authorization"] == expected
    assert result.provider_call_id == sent["sid"] and result.status == "queued"


def test_twilio_machine_detection_is_asynchronous_and_reports_to_the_status_callback():
    params = create_call_params(DialSpec(**{**SPEC.__dict__, "machine_detection": "message_end", "ring_timeout": 25}))
    assert params["machine_detection"] == "DetectMessageEnd" and params["async_amd"] == "true"
    assert params["async_amd_status_callback"] == SPEC.status_url and params["timeout"] == 25
    with FakeTwilio() as fake:
        TwilioRest(TWILIO_SID, TWILIO_TOKEN, api_base_url=fake.url).create_call(
            DialSpec(**{**SPEC.__dict__, "machine_detection": "detect"}))
    body = fake.of("create")[0]["body"]
    assert body["MachineDetection"] == ["Enable"] and body["AsyncAmd"] == ["true"]
    assert body["AsyncAmdStatusCallback"] == [SPEC.status_url]


def test_twilio_refusal_carries_status_code_and_message():
    refuse = lambda kind, n, req: (400, {"code": 21211, "message": "The 'To' number +1415 is not a valid phone number.",  # noqa: E731
                                        "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400})
    with FakeTwilio(refuse) as fake:
        with pytest.raises(ProviderRefused) as caught:
            TwilioRest(TWILIO_SID, TWILIO_TOKEN, api_base_url=fake.url).create_call(SPEC)
    error = caught.value
    assert (error.status, error.code, error.provider) == (400, "21211", "twilio")
    assert "not a valid phone number" in error.reason and not error.retryable and not error.auth_failed
    auth = lambda kind, n, req: (401, {"code": 20003, "message": "Authenticate", "status": 401})  # noqa: E731
    with FakeTwilio(auth) as fake:
        with pytest.raises(ProviderRefused) as caught:
            TwilioRest(TWILIO_SID, TWILIO_TOKEN, api_base_url=fake.url).create_call(SPEC)
    assert caught.value.auth_failed


def test_twilio_unreachable_is_a_retryable_refusal():
    rest = TwilioRest(TWILIO_SID, TWILIO_TOKEN, api_base_url=f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ProviderRefused) as caught:
        rest.create_call(SPEC)
    assert caught.value.status is None and caught.value.retryable and "no answer" in caught.value.reason
    assert not caught.value.maybe_sent  # never connected: the request surely did not arrive


def test_a_create_without_an_answer_may_have_been_placed():
    never = threading.Event()
    with FakeTwilio(gate=lambda n, request: never) as fake:
        try:
            with pytest.raises(ProviderRefused) as caught:
                TwilioRest(TWILIO_SID, TWILIO_TOKEN, api_base_url=fake.url, timeout=0.5).create_call(SPEC)
        finally:
            never.set()
    assert len(fake.of("create")) == 1  # it arrived
    assert caught.value.status is None and caught.value.maybe_sent


def test_twilio_hangup_cancels_a_ringing_call_and_completes_an_answered_one():
    with FakeTwilio() as fake:
        rest = TwilioRest(TWILIO_SID, TWILIO_TOKEN, api_base_url=fake.url)
        sid = rest.create_call(SPEC).provider_call_id
        assert rest.hangup(sid, answered=False) == "canceled"
        other = rest.create_call(SPEC).provider_call_id
        fake.statuses[other] = "in-progress"  # answered, though the gateway had not heard yet
        assert rest.hangup(other, answered=False) == "completed"
        third = rest.create_call(SPEC).provider_call_id
        fake.statuses[third] = "in-progress"
        assert rest.hangup(third, answered=True) == "completed"
        fake.details[third] = {"start_time": "Mon, 07 Dec 2026 12:00:05 +0000", "end_time": "Mon, 07 Dec 2026 12:00:35 +0000",
                               "duration": "30"}
        assert rest.fetch_call(third) == ProviderCall("completed", datetime(2026, 12, 7, 12, 0, 35, tzinfo=timezone.utc), 30)
        assert rest.fetch_call(sid) == ProviderCall("canceled", None, None)
    updates = fake.of("update")
    assert [(u["params"]["sid"], u["body"]["Status"]) for u in updates] == [
        (sid, ["canceled"]), (other, ["canceled"]), (other, ["completed"]), (third, ["completed"])]


# -- Vonage ------------------------------------------------------------------------------------

@pytest.mark.parametrize("end_time", ["2026-12-07T12:00:35.000Z", "2026-12-07 12:00:35"])
def test_vonage_fetch_call_reads_its_status_end_time_and_duration(rsa_key, end_time):
    with FakeVonage() as fake:
        rest = VonageRest("app-1", rsa_key["pkcs8"], api_base_url=fake.url)
        fake.calls["u-1"] = {"status": "completed", "start_time": "2026-12-07T12:00:05.000Z", "end_time": end_time,
                             "duration": "30"}
        fake.calls["u-2"] = {"status": "ringing"}
        assert rest.fetch_call("u-1") == ProviderCall("completed", datetime(2026, 12, 7, 12, 0, 35, tzinfo=timezone.utc), 30)
        assert rest.fetch_call("u-2") == ProviderCall("ringing", None, None)
    assert [r["path"] for r in fake.of("fetch")] == ["/v1/calls/u-1", "/v1/calls/u-2"]


def test_vonage_create_sends_answer_and_event_urls_with_an_application_jwt(rsa_key):
    with FakeVonage() as fake:
        rest = VonageRest("app-1", rsa_key["pkcs8"], api_base_url=fake.url)
        result = rest.create_call(DialSpec(**{**SPEC.__dict__, "machine_detection": "detect", "ring_timeout": 30}))
    (sent,) = fake.of("create")
    assert sent["path"] == "/v1/calls" and sent["method"] == "POST"
    assert sent["body"] == {
        "to": [{"type": "phone", "number": "14155550100"}], "from": {"type": "phone", "number": "14155550199"},
        "answer_url": [SPEC.answer_url], "event_url": [SPEC.status_url], "event_method": "POST",
        "machine_detection": "continue", "ringing_timer": 30,
    }
    scheme, token = sent["headers"]["authorization"].split(" ", 1)
    assert scheme == "Bearer"
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, rsa_key["public"], algorithms=["RS256"])
    assert claims["application_id"] == "app-1" and claims["exp"] - claims["iat"] == 900 and claims["jti"]
    assert abs(claims["iat"] - time.time()) < 60
    assert result.provider_call_id == sent["uuid"] and result.status == "started"


def test_vonage_inline_ncco_and_advanced_machine_detection(rsa_key):
    ncco = render_connect_ncco("wss://gw.example.com/api/v1/telephony/ws/w/u/r1", {"stream_token": "t"},
                               SPEC.status_url)
    with FakeVonage() as fake:
        VonageRest("app-1", rsa_key["pkcs1"], api_base_url=fake.url).create_call(
            DialSpec(**{**SPEC.__dict__, "ncco": ncco, "machine_detection": "message_end"}))
    body = fake.of("create")[0]["body"]
    assert "answer_url" not in body
    assert body["ncco"] == [{
        "action": "connect", "eventType": "synchronous", "eventUrl": [SPEC.status_url], "from": "14155550199",
        "endpoint": [{"type": "websocket", "uri": "wss://gw.example.com/api/v1/telephony/ws/w/u/r1",
                      "content-type": "audio/l16;rate=16000", "headers": {"stream_token": "t"}}],
    }]
    assert body["advanced_machine_detection"] == {"behavior": "continue", "mode": "detect_beep"}


def test_vonage_hangup_and_refusals(rsa_key):
    script = lambda kind, n, req: (401, {"type": "https://developer.nexmo.com/api-errors#unauthorized",  # noqa: E731
                                         "title": "Unauthorized", "detail": "You did not provide correct credentials."}) \
        if kind == "create" else None
    with FakeVonage(script) as fake:
        rest = VonageRest("app-1", rsa_key["pkcs8"], api_base_url=fake.url)
        rest.hangup("0e2a6c4e-1111-2222-3333-444455556666", answered=True)
        with pytest.raises(ProviderRefused) as caught:
            rest.create_call(SPEC)
    (update,) = fake.of("update")
    assert update["method"] == "PUT" and update["path"] == "/v1/calls/0e2a6c4e-1111-2222-3333-444455556666"
    assert update["body"] == {"action": "hangup"}
    assert caught.value.auth_failed and caught.value.reason == "You did not provide correct credentials."
    assert len(fake.of("create")) == 1  # refused once, never re-sent


def test_vonage_private_key_must_be_usable(tmp_path, rsa_key):
    path = tmp_path / "private.key"
    path.write_text(rsa_key["pkcs1"])
    assert load_private_key(str(path)).startswith("-----BEGIN PRIVATE KEY-----")
    with pytest.raises(PrivateKeyError, match="cannot read"):
        load_private_key(str(tmp_path / "missing.key"))
    with pytest.raises(PrivateKeyError, match="not an unencrypted PEM"):
        load_private_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
