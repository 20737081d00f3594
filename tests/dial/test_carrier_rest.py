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
    with scripted((200, {"sid": "v3:abc", "status": "completed"})) as stand_in:
        rest = TelnyxRest("KEY-1", "acct-1", "app-9", api_base_url=stand_in.url)
        assert rest.hangup("v3:abc/x", answered=True) == "completed"
        assert rest.fetch_status("v3:abc") == "completed"
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
