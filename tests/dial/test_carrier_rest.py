"""Telnyx's and Plivo's REST dialing against local stand-ins of their APIs: each request the
gateway sends is compared with the one the provider's own SDK sends for the same call."""

from __future__ import annotations

import json

import pytest

from support import Receiver
from gateway.providers.rest import DialSpec, ProviderRefused
from gateway.providers.telnyx_rest import TelnyxRest, create_call_body

SPEC = DialSpec(to="+14155550100", from_="+14155550199", answer_url="https://gw.example.com/api/v1/telephony/webhook/w/u/r1",
                status_url="https://gw.example.com/api/v1/telephony/status-callback/r1")


def scripted(*answers):
    """A stand-in answering each request in turn with (status, JSON body)."""
    answers = list(answers)
    return Receiver(lambda n, path: (answers[min(n, len(answers) - 1)][0], {},
                                     json.dumps(answers[min(n, len(answers) - 1)][1]).encode(), 0.0))


def request_shape(request):
    return (request["method"], request["path"], json.loads(request["body"]) if request["body"] else None,
            request["headers"].get("authorization"), request["headers"].get("content-type"))


# -- Telnyx ------------------------------------------------------------------------------------


def telnyx_sdk(url):
    import telnyx

    return telnyx.Telnyx(api_key="KEY-1", base_url=url + "/v2", max_retries=0)


def test_telnyx_create_is_the_sdks_request_with_the_gateway_urls():
    with scripted((200, {"from": "+14155550199", "to": "+14155550100", "status": "queued"})) as stand_in:
        result = TelnyxRest("KEY-1", "acct-1", "app-9", api_base_url=stand_in.url).create_call(SPEC)
        # The SDK sends a create's body keys as given (its union type is not aliased): the API's
        # documented CamelCase names, "keys ... MUST BE formatted in CamelCase".
        telnyx_sdk(stand_in.url).texml.accounts.calls.calls("acct-1", body={
            "ApplicationSid": "app-9", "To": SPEC.to, "From": SPEC.from_, "Url": SPEC.answer_url, "UrlMethod": "POST",
            "StatusCallback": SPEC.status_url, "StatusCallbackEvent": "initiated ringing answered completed",
            "StatusCallbackMethod": "POST"})
    ours, sdk = (request_shape(r) for r in stand_in.requests)
    assert ours == sdk
    assert ours[:4] == ("POST", "/v2/texml/Accounts/acct-1/Calls", {
        "ApplicationSid": "app-9", "To": SPEC.to, "From": SPEC.from_, "Url": SPEC.answer_url, "UrlMethod": "POST",
        "StatusCallback": SPEC.status_url, "StatusCallbackEvent": "initiated ringing answered completed",
        "StatusCallbackMethod": "POST"}, "Bearer KEY-1")
    assert result.provider_call_id is None and result.status == "queued"


def test_telnyx_machine_detection_and_ring_timeout_are_the_sdks_fields():
    spec = DialSpec(**{**SPEC.__dict__, "machine_detection": "message_end", "ring_timeout": 25})
    body = create_call_body("app-9", spec)
    with scripted((200, {"call_sid": "v3:abc", "status": "queued"})) as stand_in:
        result = TelnyxRest("KEY-1", "acct-1", "app-9", api_base_url=stand_in.url).create_call(spec)
        telnyx_sdk(stand_in.url).texml.accounts.calls.calls("acct-1", body={
            "ApplicationSid": "app-9", "To": SPEC.to, "From": SPEC.from_, "Url": SPEC.answer_url, "UrlMethod": "POST",
            "StatusCallback": SPEC.status_url, "StatusCallbackEvent": "initiated ringing answered completed",
            "StatusCallbackMethod": "POST", "MachineDetection": "DetectMessageEnd", "AsyncAmd": True,
            "AsyncAmdStatusCallback": SPEC.status_url, "AsyncAmdStatusCallbackMethod": "POST", "Timeout": 25})
    ours, sdk = (request_shape(r) for r in stand_in.requests)
    assert ours == sdk and ours[2] == body
    assert body["MachineDetection"] == "DetectMessageEnd" and body["AsyncAmd"] is True and body["Timeout"] == 25
    assert result.provider_call_id == "v3:abc"


def test_telnyx_hangup_and_status_are_the_sdks_requests():
    ended = {"sid": "v3:abc", "status": "completed", "end_time": "Mon, 07 Dec 2026 10:00:30 +0000", "duration": "30"}
    with scripted((200, ended)) as stand_in:
        rest = TelnyxRest("KEY-1", "acct-1", "app-9", api_base_url=stand_in.url)
        assert rest.hangup("v3:abc/x", answered=True) == "completed"
        call = rest.fetch_call("v3:abc")
        assert (call.status, call.duration, call.ended_at.isoformat()) == ("completed", 30, "2026-12-07T10:00:30+00:00")
        sdk = telnyx_sdk(stand_in.url)
        sdk.texml.accounts.calls.update("v3:abc/x", account_sid="acct-1", status="completed")
        sdk.texml.accounts.calls.retrieve("v3:abc", account_sid="acct-1")
    shapes = [request_shape(r) for r in stand_in.requests]
    assert shapes[0] == shapes[2] and shapes[1][:3] == shapes[3][:3]
    assert shapes[0][:3] == ("POST", "/v2/texml/Accounts/acct-1/Calls/v3:abc/x", {"Status": "completed"})
    assert shapes[1][:2] == ("GET", "/v2/texml/Accounts/acct-1/Calls/v3:abc")


def test_telnyx_refusals_carry_status_code_and_detail():
    answer = {"errors": [{"code": "10015", "title": "Invalid value", "detail": "The 'To' number is not valid."}]}
    with scripted((422, answer)) as stand_in:
        with pytest.raises(ProviderRefused) as caught:
            TelnyxRest("KEY-1", "acct-1", "app-9", api_base_url=stand_in.url).create_call(SPEC)
    error = caught.value
    assert (error.provider, error.status, error.code, error.reason) == ("telnyx", 422, "10015", "The 'To' number is not valid.")
    assert not error.retryable
    with scripted((401, {"errors": [{"code": "10009", "title": "Authentication failed"}]})) as stand_in:
        with pytest.raises(ProviderRefused) as caught:
            TelnyxRest("bad", "acct-1", "app-9", api_base_url=stand_in.url).hangup("v3:a", answered=False)
    assert caught.value.auth_failed and caught.value.reason == "Authentication failed"
    with pytest.raises(ProviderRefused) as caught:
        TelnyxRest("KEY-1", "acct-1", "app-9", api_base_url="http://127.0.0.1:9").create_call(SPEC)
    assert caught.value.status is None and caught.value.retryable and not caught.value.maybe_sent
    assert "KEY-1" not in str(caught.value)


# -- Plivo -------------------------------------------------------------------------------------


@pytest.fixture
def plivo_sdk(monkeypatch):
    """The plivo SDK's client, its voice API base pointed at a stand-in."""
    import plivo
    import plivo.rest.client as client_module

    def make(url):
        monkeypatch.setattr(client_module, "API_VOICE_BASE_URI", url + "/v1/Account")
        return plivo.RestClient("MAXXXXXXXXXXXXXXXXXX", "token-1")

    return make


def test_plivo_create_is_the_sdks_request(plivo_sdk):
    from gateway.providers.plivo_rest import PlivoRest

    fired = {"api_id": "a-1", "message": "call fired", "request_uuid": "r-1"}
    spec = DialSpec(**{**SPEC.__dict__, "machine_detection": "detect", "ring_timeout": 30})
    with scripted((201, fired)) as stand_in:
        result = PlivoRest("MAXXXXXXXXXXXXXXXXXX", "token-1", api_base_url=stand_in.url).create_call(spec)
        plivo_sdk(stand_in.url).calls.create(
            from_="14155550199", to_="14155550100", answer_url=SPEC.answer_url, answer_method="POST",
            ring_url=SPEC.status_url, hangup_url=SPEC.status_url, machine_detection="true",
            machine_detection_url=SPEC.status_url, ring_timeout=30)
    ours, sdk = (request_shape(r) for r in stand_in.requests)
    assert ours[:3] == sdk[:3] and ours[3] == sdk[3] and ours[4] == sdk[4]
    assert ours[1] == "/v1/Account/MAXXXXXXXXXXXXXXXXXX/Call/"
    assert ours[3].startswith("Basic ") and ours[4] == "application/json"
    assert ours[2]["answer_url"] == SPEC.answer_url and ours[2]["hangup_url"] == ours[2]["ring_url"] == SPEC.status_url
    assert ours[2]["machine_detection"] == "true" and ours[2]["to"] == "14155550100"
    assert result.provider_call_id is None and result.raw["request_uuid"] == "r-1"


def test_plivo_hangup_and_status_are_the_sdks_requests(plivo_sdk):
    from gateway.providers.plivo_rest import PlivoRest

    record = {"call_uuid": "c-1", "end_time": "2026-12-07 15:30:30+05:30", "call_duration": 30}
    answers = [(204, {}), (204, {}), (200, {"call_status": "in-progress", "call_uuid": "c-1"}),
               (200, {"call_status": "in-progress", "call_uuid": "c-1"}), (404, {"error": "not found"}),
               (404, {"error": "x"}), (200, record), (200, record), (404, {"error": "x"}), (404, {"error": "x"})]
    with scripted(*answers) as stand_in:
        rest = PlivoRest("MAXXXXXXXXXXXXXXXXXX", "token-1", api_base_url=stand_in.url)
        sdk = plivo_sdk(stand_in.url)
        assert rest.hangup("c-1", answered=True) is None
        sdk.calls.delete("c-1")
        assert rest.fetch_call("c-1").status == "in-progress"
        sdk.live_calls.get("c-1")
        assert rest.hangup("c-1", answered=True) == "completed"  # 404: already ended
        ended = rest.fetch_call("c-1")  # no longer live: its record
        assert (ended.status, ended.duration, ended.ended_at.isoformat()) == ("completed", 30, "2026-12-07T10:00:30+00:00")
        sdk.calls.get("c-1")
        assert rest.fetch_call("c-1").status == "completed"  # neither live nor recorded
    shapes = [(r["method"], r["path"], r["query"], r["headers"].get("authorization")) for r in stand_in.requests]
    assert shapes[0] == shapes[1] == ("DELETE", "/v1/Account/MAXXXXXXXXXXXXXXXXXX/Call/c-1/", "", shapes[0][3])
    assert shapes[2] == shapes[3] and shapes[2][:3] == ("GET", "/v1/Account/MAXXXXXXXXXXXXXXXXXX/Call/c-1/", "status=live")
    # the SDK's calls.get also puts call_uuid in the query (its argument passed along): the path is the record
    assert shapes[6][:2] == shapes[7][:2] == ("GET", "/v1/Account/MAXXXXXXXXXXXXXXXXXX/Call/c-1/") and shapes[6][2] == ""


def test_plivo_refusals_carry_status_and_error():
    from gateway.providers.plivo_rest import PlivoRest

    with scripted((400, {"api_id": "a", "error": "invalid 'to' number"})) as stand_in:
        with pytest.raises(ProviderRefused) as caught:
            PlivoRest("MAXXXXXXXXXXXXXXXXXX", "token-1", api_base_url=stand_in.url).create_call(SPEC)
    assert (caught.value.provider, caught.value.status, caught.value.reason) == ("plivo", 400, "invalid 'to' number")
    with scripted((401, {"error": "authentication failed"})) as stand_in:
        with pytest.raises(ProviderRefused) as caught:
            PlivoRest("MAXXXXXXXXXXXXXXXXXX", "bad", api_base_url=stand_in.url).hangup("c-1", answered=False)
    assert caught.value.auth_failed
    with pytest.raises(ProviderRefused) as caught:
        PlivoRest("MAXXXXXXXXXXXXXXXXXX", "token-1", api_base_url="http://127.0.0.1:9").create_call(SPEC)
    assert caught.value.retryable and "token-1" not in str(caught.value)
