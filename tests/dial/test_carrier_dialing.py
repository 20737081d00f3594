"""Dialing through Telnyx and Plivo from the API and from campaigns: the real gateway on
loopback, each provider's REST API a local stand-in, signed callbacks ending the calls."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import httpx

from dial.campaign_support import FAST_RETRY, api, create, phones, wait_status
from support import Receiver, carrier_config, plivo_config, telnyx_config, telnyx_headers


def telnyx_api():
    """A stand-in of Telnyx's TeXML REST API: every request answered as the API answers a create."""
    return Receiver(lambda n, path: (200, {}, json.dumps({"from": "+1", "to": "+2", "status": "queued"}).encode(), 0.0))


def dialing(tmp_path, provider, stand_in, **dial):
    providers = carrier_config(tmp_path)["providers"]
    providers["telnyx"] = telnyx_config(api_base_url=stand_in.url)
    providers["plivo"] = plivo_config(api_base_url=stand_in.url)
    return {"providers": providers, "dial": {"poll_seconds": 0.05, "webhook_retry": FAST_RETRY,
                                             "caller_id": {provider: "+14155550199"}, "default_provider": provider, **dial}}


def telnyx_callback(url, sid, status, **extra):
    body = urlencode({"CallSid": sid, "AccountSid": "acct", "CallStatus": status, "From": "+14155550199",
                      "Direction": "outbound", **extra}).encode()
    response = httpx.post(url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                      **telnyx_headers(body)}, timeout=10)
    assert response.status_code == 204, response.text


def test_a_telnyx_call_placed_through_the_api_then_hung_up(gateway_server, tmp_path):
    with telnyx_api() as stand_in:
        server = gateway_server(**dialing(tmp_path, "telnyx", stand_in))
        placed = api(server.url, "POST", "/api/v1/calls", json={"provider": "telnyx", "to": "+14155550100",
                                                                  "workflow_id": "wf", "user_id": "u", "machine_detection": True})
        assert placed.status_code == 201, placed.text
        run = placed.json()["workflow_run_id"]
        (create_request,) = stand_in.requests
        body = json.loads(create_request["body"])
        assert create_request["path"] == "/v2/texml/Accounts/acct-telnyx/Calls"
        assert body["ApplicationSid"] == "texml-app-1" and body["To"] == "+14155550100" and body["From"] == "+14155550199"
        assert body["Url"] == f"{server.url}/api/v1/telephony/webhook/wf/u/{run}"
        assert body["StatusCallback"] == body["AsyncAmdStatusCallback"] == f"{server.url}/api/v1/telephony/status-callback/{run}"
        early = api(server.url, "POST", f"/api/v1/calls/{run}/hangup")
        assert early.status_code == 409 and "has not reported this call's id" in early.json()["detail"]
        telnyx_callback(body["StatusCallback"], "v3:call-1", "ringing")
        hung = api(server.url, "POST", f"/api/v1/calls/{run}/hangup")
        assert hung.status_code == 202 and hung.json()["provider_call_id"] == "v3:call-1"
        assert stand_in.requests[1]["path"] == "/v2/texml/Accounts/acct-telnyx/Calls/v3:call-1"
        assert json.loads(stand_in.requests[1]["body"]) == {"Status": "completed"}
        assert stand_in.requests[1]["headers"]["authorization"] == "Bearer KEY-test-telnyx"
        telnyx_callback(body["StatusCallback"], "v3:call-1", "completed", CallDuration="0")
        call = api(server.url, "GET", f"/api/v1/calls/{run}").json()
        assert call["state"] == "completed" and call["provider"] == "telnyx" and call["direction"] == "outbound"
        assert "KEY-test-telnyx" not in json.dumps(call)


def test_a_telnyx_campaign_dials_everyone_and_completes(gateway_server, tmp_path):
    with telnyx_api() as stand_in:
        server = gateway_server(**dialing(tmp_path, "telnyx", stand_in))
        numbers = phones(3)
        made = create(server.url, numbers, concurrency=3, calls_per_second=50)
        requests = stand_in.wait_for(3)
        bodies = [json.loads(r["body"]) for r in requests]
        assert sorted(b["To"] for b in bodies) == numbers
        for index, body in enumerate(bodies):
            telnyx_callback(body["StatusCallback"], f"v3:c{index}", "in-progress")
            telnyx_callback(body["StatusCallback"], f"v3:c{index}", "completed", CallDuration="30")
        done = wait_status(server.url, made["id"], "completed")
        assert done["statistics"]["succeeded"] == 3


def test_dialing_a_carrier_without_its_rest_keys_names_them(gateway_server, tmp_path):
    providers = carrier_config(tmp_path)["providers"]
    providers["telnyx"] = {"public_key": providers["telnyx"]["public_key"]}
    server = gateway_server(providers=providers)
    refused = api(server.url, "POST", "/api/v1/calls", json={"provider": "telnyx", "to": "+14155550100", "from": "+14155550199",
                                                             "workflow_id": "wf", "user_id": "u"})
    assert refused.status_code == 400
    assert "set providers.telnyx.api_key, account_sid and application_id" in refused.json()["detail"]


def plivo_api():
    """A stand-in of Plivo's Voice API: creates answered as Plivo answers them, hang-ups with 204."""
    fired = json.dumps({"api_id": "a", "message": "call fired", "request_uuid": "r-1"}).encode()
    return Receiver(lambda n, path: (201, {}, fired, 0.0))


def plivo_callback(url, call_uuid, status, **extra):
    from support import plivo_headers

    fields = {"CallUUID": call_uuid, "CallStatus": status, "From": "14155550199", "Direction": "outbound", **extra}
    response = httpx.post(url, data=fields, headers=plivo_headers("POST", url, fields), timeout=10)
    assert response.status_code == 204, response.text


def test_a_plivo_call_placed_through_the_api_then_hung_up(gateway_server, tmp_path):
    with plivo_api() as stand_in:
        server = gateway_server(**dialing(tmp_path, "plivo", stand_in))
        placed = api(server.url, "POST", "/api/v1/calls", json={"to": "+14155550100", "workflow_id": "wf", "user_id": "u",
                                                                  "machine_detection": "detect"})
        assert placed.status_code == 201, placed.text
        run = placed.json()["workflow_run_id"]
        body = json.loads(stand_in.requests[0]["body"])
        assert stand_in.requests[0]["path"] == "/v1/Account/MAXXXXXXXXXXXXXXXXXX/Call/"
        assert body["answer_url"] == f"{server.url}/api/v1/telephony/webhook/wf/u/{run}"
        assert body["hangup_url"] == body["ring_url"] == body["machine_detection_url"] == \
            f"{server.url}/api/v1/telephony/status-callback/{run}"
        plivo_callback(body["ring_url"], "c-77", "ringing", Event="Ring")
        plivo_callback(body["machine_detection_url"], "c-77", "in-progress", Machine="true", Event="MachineDetection")
        hung = api(server.url, "POST", f"/api/v1/calls/{run}/hangup")
        assert hung.status_code == 202 and hung.json()["provider_call_id"] == "c-77"
        assert (stand_in.requests[1]["method"], stand_in.requests[1]["path"]) == \
            ("DELETE", "/v1/Account/MAXXXXXXXXXXXXXXXXXX/Call/c-77/")
        plivo_callback(body["hangup_url"], "c-77", "completed", Event="Hangup", Duration="4")
        call = api(server.url, "GET", f"/api/v1/calls/{run}").json()
        assert call["state"] == "completed" and call["voicemail"] is True and call["provider"] == "plivo"
        assert "test-plivo-auth-token" not in json.dumps(call)


def test_a_plivo_campaign_dials_everyone_and_completes(gateway_server, tmp_path):
    with plivo_api() as stand_in:
        server = gateway_server(**dialing(tmp_path, "plivo", stand_in))
        numbers = phones(3)
        made = create(server.url, numbers, concurrency=3, calls_per_second=50)
        bodies = [json.loads(r["body"]) for r in stand_in.wait_for(3)]
        assert sorted("+" + b["to"] for b in bodies) == numbers
        for index, body in enumerate(bodies):
            plivo_callback(body["hangup_url"], f"c-{index}", "completed", Event="Hangup", Duration="30")
        done = wait_status(server.url, made["id"], "completed")
        assert done["statistics"]["total"] == 3 and done["statistics"]["processed"] == 3
