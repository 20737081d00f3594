"""Provider-facing routes on a real loopback server: verification, answers, lifecycle."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import API_KEY, TWILIO_SID, twilio_signature, vonage_jwt
from gateway.media.token import check_stream_token

WEBHOOK = "/api/v1/telephony/webhook/wf-1/user-1/run-1"


def twilio_post(server, path, params, *, sign_url=None, headers=None, **kw):
    url = server.url + path
    signature = twilio_signature(sign_url or url, params)
    return httpx.post(url, data=params, headers={"X-Twilio-Signature": signature, **(headers or {})}, **kw)


def call_params(status="ringing", sid="CA" + "a" * 32, **extra):
    params = {"CallSid": sid, "AccountSid": TWILIO_SID, "From": "+15551230000", "To": "+15559870000",
              "CallStatus": status, "Direction": "inbound", "ApiVersion": "2010-04-01"}
    params.update(extra)
    return params


def admin_get(server, path):
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {API_KEY}"})


def parse_twiml(text):
    root = ET.fromstring(text)
    stream = root.find("./Connect/Stream")
    assert root.tag == "Response" and stream is not None
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    return stream.get("url"), params


def test_twilio_initial_webhook_answers_twiml_and_creates_call(gateway_server):
    server = gateway_server()
    response = twilio_post(server, WEBHOOK, call_params())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    url, params = parse_twiml(response.text)
    assert url == f"ws://127.0.0.1:{server.port}/api/v1/telephony/ws/wf-1/user-1/run-1"
    assert params["workflow_id"] == "wf-1" and params["user_id"] == "user-1" and params["workflow_run_id"] == "run-1"
    key = server.app.state.gateway.secret_key
    ids = {"workflow_id": "wf-1", "user_id": "user-1", "now": __import__("time").time()}
    assert check_stream_token(key, "run-1", params["stream_token"], **ids) is None
    assert check_stream_token(key, "run-2", params["stream_token"], **ids) is not None
    call = admin_get(server, "/api/v1/calls/run-1").json()
    assert call["state"] == "ringing" and call["provider"] == "twilio" and call["workflow_id"] == "wf-1"
    assert call["from"] == "+15551230000" and call["provider_call_id"] == "CA" + "a" * 32
    assert len(call["timeline"]) == 1 and call["timeline"][0]["kind"] == "answer"


def test_public_url_makes_wss_stream_and_is_what_twilio_signs(gateway_server):
    server = gateway_server(public_url="https://gw.example.com")
    params = call_params()
    response = twilio_post(server, WEBHOOK, params, sign_url="https://gw.example.com" + WEBHOOK)
    assert response.status_code == 200
    url, _ = parse_twiml(response.text)
    assert url == "wss://gw.example.com/api/v1/telephony/ws/wf-1/user-1/run-1"
    # Signed over the local URL instead: refused.
    assert twilio_post(server, WEBHOOK, params).status_code == 403


def test_trusted_proxy_forwarded_headers_are_honoured(gateway_server):
    server = gateway_server()  # 127.0.0.1/32 trusted by default
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example.org"}
    ok = twilio_post(server, WEBHOOK, call_params(), sign_url="https://public.example.org" + WEBHOOK, headers=forwarded)
    assert ok.status_code == 200
    assert parse_twiml(ok.text)[0].startswith("wss://public.example.org/")
    # Signed with port 443 explicitly: the SDK's port variants accept it.
    ok_port = twilio_post(server, WEBHOOK, call_params(), sign_url="https://public.example.org:443" + WEBHOOK, headers=forwarded)
    assert ok_port.status_code == 200


def test_untrusted_proxy_headers_are_ignored(gateway_server):
    server = gateway_server(trusted_proxies=["10.0.0.0/8"])
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example.org"}
    refused = twilio_post(server, WEBHOOK, call_params(), sign_url="https://public.example.org" + WEBHOOK, headers=forwarded)
    assert refused.status_code == 403
    ok = twilio_post(server, WEBHOOK, call_params(), headers=forwarded)  # signed over what the app really saw
    assert ok.status_code == 200


def test_query_string_is_part_of_signed_url(gateway_server):
    server = gateway_server()
    path = WEBHOOK + "?provider=twilio&x=a%20b"
    assert twilio_post(server, path, call_params()).status_code == 200
    url = server.url + path
    bad_sig = twilio_signature(server.url + WEBHOOK + "?provider=twilio&x=a+b", call_params())
    assert httpx.post(url, data=call_params(), headers={"X-Twilio-Signature": bad_sig}).status_code == 403


def test_twilio_json_body_with_body_sha256(gateway_server):
    import hashlib

    server = gateway_server()
    body = json.dumps({"CallSid": "CA" + "b" * 32, "CallStatus": "ringing"}).encode()
    path = WEBHOOK + "?bodySHA256=" + hashlib.sha256(body).hexdigest()
    signature = twilio_signature(server.url + path, {})
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    assert httpx.post(server.url + path, content=body, headers=headers).status_code == 200
    tampered = body.replace(b"ringing", b"completed")
    assert httpx.post(server.url + path, content=tampered, headers=headers).status_code == 403


@pytest.mark.parametrize("tamper", ["url", "param", "header", "extra_param"])
def test_tampered_twilio_requests_are_refused_and_nothing_stored(gateway_server, tamper):
    server = gateway_server()
    params = call_params()
    url = server.url + WEBHOOK
    signature = twilio_signature(url, params)
    if tamper == "url":
        url = server.url + "/api/v1/telephony/webhook/wf-1/user-1/run-9"
    elif tamper == "param":
        params = {**params, "CallStatus": "completed"}
    elif tamper == "header":
        signature = signature[:-2] + ("A=" if not signature.endswith("A=") else "B=")
    elif tamper == "extra_param":
        params = {**params, "Injected": "1"}
    response = httpx.post(url, data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "signature" in response.json()["detail"]
    listing = admin_get(server, "/api/v1/calls").json()
    assert listing["calls"] == []


def test_unsigned_and_unconfigured_and_oversized(gateway_server):
    server = gateway_server(providers={"vonage": {"signature_secret": "s" * 32}})
    unsigned = httpx.post(server.url + WEBHOOK, data=call_params())
    assert unsigned.status_code == 403 and "unsigned" in unsigned.json()["detail"]
    not_configured = twilio_post(server, WEBHOOK, call_params())
    assert not_configured.status_code == 403 and "twilio is not configured" in not_configured.json()["detail"]
    big = httpx.post(server.url + WEBHOOK, content=b"a=" + b"x" * 70000,
                     headers={"X-Twilio-Signature": "x", "Content-Type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413
    bad_provider = httpx.post(server.url + WEBHOOK + "?provider=exotel", data=call_params())
    assert bad_provider.status_code == 400


def test_signed_but_malformed_callback_is_400(gateway_server):
    server = gateway_server()
    params = call_params(SequenceNumber="many")
    response = twilio_post(server, "/api/v1/telephony/status-callback/run-1", params)
    assert response.status_code == 400 and "SequenceNumber" in response.json()["detail"]
    no_sid = {k: v for k, v in call_params().items() if k != "CallSid"}
    response = twilio_post(server, "/api/v1/telephony/status-callback/run-1", no_sid)
    assert response.status_code == 400 and "CallSid" in response.json()["detail"]


def test_status_callbacks_taken_ahead_of_the_router_keep_its_answers(gateway_server):
    """The fast path for status callbacks answers what the routed handler would: 413 over the
    body limit (the declared length, or a body that runs past it), 400 for a bad run id, 405
    for another method, 404 for a longer path; 204 and the call stored on success."""
    server = gateway_server()
    status = "/api/v1/telephony/status-callback/"
    big = httpx.post(server.url + status + "run-1", content=b"a=" + b"x" * 70000,
                     headers={"X-Twilio-Signature": "x", "Content-Type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413 and "over the" in big.json()["detail"]

    def chunks():
        yield b"a=" + b"y" * 40000
        yield b"z" * 40000  # no Content-Length: the limit is found while reading

    streamed = httpx.post(server.url + status + "run-1", content=chunks(),
                          headers={"X-Twilio-Signature": "x", "Content-Type": "application/x-www-form-urlencoded"})
    assert streamed.status_code == 413
    bad_id = twilio_post(server, status + "run%20one", call_params())
    assert bad_id.status_code == 400 and "workflow_run_id" in bad_id.json()["detail"]
    assert httpx.put(server.url + status + "run-1").status_code == 405
    assert twilio_post(server, status + "run-1/extra", call_params()).status_code == 404
    assert twilio_post(server, status, call_params()).status_code in (404, 405)
    ok = twilio_post(server, status + "run-1", call_params())
    assert ok.status_code == 204 and ok.content == b""
    assert admin_get(server, "/api/v1/calls/run-1").json()["state"] == "ringing"


def test_a_store_that_cannot_write_answers_503_and_accepts_nothing(gateway_server):
    from gateway.store import StoreError

    server = gateway_server()
    store = server.app.state.gateway.store

    async def broken(*args, **kwargs):
        raise StoreError("sqlite: disk I/O error")

    store.apply_update = broken
    for path in ("/api/v1/telephony/status-callback/run-1", WEBHOOK):
        response = twilio_post(server, path, call_params())
        assert response.status_code == 503, response.text
        assert "could not store" in response.json()["detail"] and "disk I/O error" in response.json()["detail"]
        assert "send it again" in response.json()["detail"]
    del store.apply_update  # the real one again
    assert twilio_post(server, "/api/v1/telephony/status-callback/run-1", call_params()).status_code == 204


def test_a_bug_on_the_direct_route_answers_500_and_the_connection_stays(gateway_server, caplog):
    server = gateway_server()
    store = server.app.state.gateway.store

    async def buggy(*args, **kwargs):
        raise RuntimeError("a bug")

    store.apply_update = buggy
    with httpx.Client() as client:
        url = server.url + "/api/v1/telephony/status-callback/run-1"
        params = call_params()
        headers = {"X-Twilio-Signature": twilio_signature(url, params)}
        response = client.post(url, data=params, headers=headers)
        assert response.status_code == 500 and "logged the details" in response.json()["detail"]
        del store.apply_update
        assert client.post(url, data=params, headers=headers).status_code == 204  # the same connection


def test_bad_path_ids_are_400(gateway_server):
    server = gateway_server()
    response = twilio_post(server, "/api/v1/telephony/webhook/wf%20x/u/r", call_params())
    assert response.status_code == 400 and "workflow_id" in response.json()["detail"]


def test_inbound_mints_run_and_retry_reuses_it(gateway_server):
    server = gateway_server()
    path = "/api/v1/telephony/inbound/wf-7/user-7"
    first = twilio_post(server, path, call_params(sid="CA" + "c" * 32))
    assert first.status_code == 200
    _, params = parse_twiml(first.text)
    run_id = params["workflow_run_id"]
    assert run_id and params["workflow_id"] == "wf-7"
    again = twilio_post(server, path, call_params(sid="CA" + "c" * 32))
    assert parse_twiml(again.text)[1]["workflow_run_id"] == run_id
    call = admin_get(server, f"/api/v1/calls/{run_id}").json()
    assert call["direction"] == "inbound" and call["user_id"] == "user-7"
    other = twilio_post(server, path, call_params(sid="CA" + "d" * 32))
    assert parse_twiml(other.text)[1]["workflow_run_id"] != run_id


def test_twilio_status_callbacks_follow_lifecycle_with_duplicates_and_disorder(gateway_server):
    server = gateway_server()
    twilio_post(server, WEBHOOK, call_params(status="ringing"))
    cb = "/api/v1/telephony/status-callback/run-1"
    for seq, status in [(2, "in-progress"), (1, "ringing"), (2, "in-progress"), (3, "completed"), (3, "completed")]:
        extra = {"SequenceNumber": str(seq), "CallbackSource": "call-progress-events"}
        if status == "completed":
            extra["CallDuration"] = "37"
        assert twilio_post(server, cb, call_params(status=status, **extra)).status_code == 204
    call = admin_get(server, "/api/v1/calls/run-1").json()
    assert call["state"] == "completed" and call["duration"] == 37
    assert [t["outcome"] for t in call["timeline"]] == ["created", "applied", "late", "late", "applied", "terminal"]
    events = asyncio.run(_events(server))
    assert events == ["call.ringing", "call.answered", "call.completed", "call.ended"]


async def _events(server):
    return [e.type for e in await server.app.state.gateway.store.list_events(run_id="run-1")]


def test_callback_for_unknown_run_creates_the_call(gateway_server):
    server = gateway_server()
    response = twilio_post(server, "/api/v1/telephony/status-callback/run-new", call_params(status="busy", sid="CA" + "e" * 32))
    assert response.status_code == 204
    call = admin_get(server, "/api/v1/calls/run-new").json()
    assert call["state"] == "busy" and call["ended_at"] is not None


def test_placeholder_run_matches_by_call_sid(gateway_server):
    server = gateway_server()
    twilio_post(server, WEBHOOK, call_params(sid="CA" + "f" * 32))
    assert twilio_post(server, "/api/v1/telephony/status-callback/twilio", call_params(status="in-progress", sid="CA" + "f" * 32)).status_code == 204
    assert admin_get(server, "/api/v1/calls/run-1").json()["state"] == "answered"


def test_twilio_amd_marks_voicemail(gateway_server):
    server = gateway_server()
    twilio_post(server, WEBHOOK, call_params(status="in-progress"))
    amd = {"CallSid": "CA" + "a" * 32, "AccountSid": TWILIO_SID, "AnsweredBy": "machine_end_beep", "MachineDetectionDuration": "2100"}
    assert twilio_post(server, "/api/v1/telephony/status-callback/run-1", amd).status_code == 204
    call = admin_get(server, "/api/v1/calls/run-1").json()
    assert call["voicemail"] is True


def test_get_callbacks_with_query_params_are_verified(gateway_server):
    server = gateway_server()
    path = "/api/v1/telephony/status-callback/run-g?" + urlencode(call_params(status="ringing", sid="CA" + "9" * 32))
    signature = twilio_signature(server.url + path, {})
    assert httpx.get(server.url + path, headers={"X-Twilio-Signature": signature}).status_code == 204
    assert httpx.get(server.url + path.replace("ringing", "completed"), headers={"X-Twilio-Signature": signature}).status_code == 403


# -- Vonage -----------------------------------------------------------------------------

def vonage_post(server, path, data, **claims):
    body = json.dumps(data).encode()
    token = vonage_jwt(body, **claims)
    return httpx.post(server.url + path, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def vonage_get(server, path, params, **claims):
    token = vonage_jwt(b"", **claims)
    return httpx.get(server.url + path, params=params, headers={"Authorization": f"Bearer {token}"})


def test_vonage_answer_get_gives_ncco(gateway_server):
    server = gateway_server(public_url="https://gw.example.com")
    response = vonage_get(server, WEBHOOK, {"to": "447700900000", "from": "447700900001", "uuid": "aaaaaaaa-bbbb-cccc-dddd-000000000001",
                                            "conversation_uuid": "CON-1"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    ncco = response.json()
    assert isinstance(ncco, list) and ncco[0]["action"] == "connect"
    endpoint = ncco[0]["endpoint"][0]
    assert endpoint["type"] == "websocket" and endpoint["content-type"] == "audio/l16;rate=16000"
    assert endpoint["uri"] == "wss://gw.example.com/api/v1/telephony/ws/wf-1/user-1/run-1"
    assert endpoint["headers"]["workflow_run_id"] == "run-1" and endpoint["headers"]["stream_token"]
    assert ncco[0]["eventUrl"] == ["https://gw.example.com/api/v1/telephony/status-callback/run-1"]
    call = admin_get(server, "/api/v1/calls/run-1").json()
    assert call["provider"] == "vonage" and call["state"] == "initiated" and call["to"] == "447700900000"


def test_vonage_events_lifecycle(gateway_server):
    server = gateway_server()
    uuid = "aaaaaaaa-bbbb-cccc-dddd-000000000002"
    vonage_get(server, WEBHOOK, {"to": "1", "from": "2", "uuid": uuid})
    cb = "/api/v1/telephony/status-callback/run-1"
    for status in ["started", "ringing", "answered", "machine", "ringing", "completed", "completed"]:
        data = {"uuid": uuid, "status": status, "conversation_uuid": "CON-2", "direction": "outbound",
                "timestamp": "2026-11-25T10:00:00.000Z"}
        if status == "machine":
            data = {"call_uuid": uuid, "status": "machine", "conversation_uuid": "CON-2"}
        if status == "completed":
            data["duration"] = "12"
        assert vonage_post(server, cb, data).status_code == 204
    call = admin_get(server, "/api/v1/calls/run-1").json()
    assert call["state"] == "completed" and call["voicemail"] is True and call["duration"] == 12
    events = asyncio.run(_events(server))
    assert events == ["call.initiated", "call.ringing", "call.answered", "call.voicemail_detected", "call.completed", "call.ended"]


@pytest.mark.parametrize("case", ["wrong_secret", "tampered_body", "stale_iat", "replayed", "missing", "wrong_api_key"])
def test_bad_vonage_requests_are_refused(gateway_server, case):
    server = gateway_server()
    data = {"uuid": "aaaaaaaa-bbbb-cccc-dddd-000000000003", "status": "ringing"}
    body = json.dumps(data).encode()
    headers = {"Content-Type": "application/json"}
    path = server.url + "/api/v1/telephony/status-callback/run-v"
    if case == "wrong_secret":
        headers["Authorization"] = "Bearer " + vonage_jwt(body, secret="not-the-secret-not-the-secret-xyz")
    elif case == "tampered_body":
        headers["Authorization"] = "Bearer " + vonage_jwt(body)
        body = body.replace(b"ringing", b"answered")
    elif case == "stale_iat":
        headers["Authorization"] = "Bearer " + vonage_jwt(body, iat=__import__("time").time() - 3600)
    elif case == "replayed":
        headers["Authorization"] = "Bearer " + vonage_jwt(body)
        assert httpx.post(path, content=body, headers=headers).status_code == 204
    elif case == "wrong_api_key":
        headers["Authorization"] = "Bearer " + vonage_jwt(body, api_key="other")
    response = httpx.post(path, content=body, headers=headers)
    assert response.status_code == 403, response.text
    if case != "replayed":
        assert admin_get(server, "/api/v1/calls").json()["calls"] == []


def test_vonage_malformed_json_is_400(gateway_server):
    server = gateway_server()
    body = b'{"uuid": "x", "status": '
    token = vonage_jwt(body)
    response = httpx.post(server.url + "/api/v1/telephony/status-callback/run-1", content=body,
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["detail"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2048))
def test_signed_arbitrary_bytes_never_5xx(gateway_server_shared, body):
    server = gateway_server_shared
    # Vonage: a valid JWT over arbitrary bytes; Twilio: a valid signature over a form we cannot know: 4xx.
    token = vonage_jwt(body)
    r1 = httpx.post(server.url + "/api/v1/telephony/status-callback/run-h", content=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert 200 <= r1.status_code < 500 and r1.status_code != 500
    r2 = httpx.post(server.url + WEBHOOK, content=body, headers={"X-Twilio-Signature": "abc", "Content-Type": "application/x-www-form-urlencoded"})
    assert 400 <= r2.status_code < 500


@pytest.fixture(scope="module")
def gateway_server_shared(tmp_path_factory):
    from support import ServerThread, base_config
    from gateway.app import create_app
    from gateway.config import parse_config

    tmp = tmp_path_factory.mktemp("shared")
    with ServerThread(create_app(parse_config(base_config(tmp), env={}))) as server:
        yield server


def test_a_replayed_vonage_request_is_refused_by_another_instance_and_after_a_restart(gateway_server, store_config):
    """The `jti`s seen are kept in the store: neither a second instance nor a restart accepts a replay."""
    data = {"uuid": "aaaaaaaa-bbbb-cccc-dddd-000000000009", "status": "ringing"}
    body = json.dumps(data).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + vonage_jwt(body)}
    path = "/api/v1/telephony/status-callback/run-r"
    first = gateway_server(**store_config)
    assert httpx.post(first.url + path, content=body, headers=headers).status_code == 204
    second = gateway_server(**store_config)  # another instance on the same store
    refused = httpx.post(second.url + path, content=body, headers=headers)
    assert refused.status_code == 403 and refused.json()["detail"] == "vonage signature check failed: replayed token"
    first.__exit__(None, None, None)
    restarted = gateway_server(**store_config)
    assert httpx.post(restarted.url + path, content=body, headers=headers).status_code == 403
    timeline = admin_get(restarted, "/api/v1/calls/run-r").json()["timeline"]
    assert len(timeline) == 1  # nothing of the replays was stored
