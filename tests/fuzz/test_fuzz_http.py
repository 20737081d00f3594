"""Fuzzing the HTTP surface on a real uvicorn server over loopback: provider webhooks (Twilio
forms and JSON bodies, Vonage JWTs and bodies) and the admin API (bodies, query parameters,
pagination cursors, signed media links). Whatever arrives, the answer is never a 5xx, nothing
is logged at ERROR (no unhandled exception), and input that is refused writes no state."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fuzz_support import ErrorLog, json_values
from support import API_KEY, ServerThread, base_config, twilio_signature, vonage_jwt

ADMIN = {"Authorization": f"Bearer {API_KEY}"}
STATUS = "/api/v1/telephony/status-callback/"
WEBHOOK = "/api/v1/telephony/webhook/wf-f/user-f/"
RUNS = itertools.count()
SHARED = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

TWILIO_NAMES = ["CallSid", "CallStatus", "AnsweredBy", "SequenceNumber", "Direction", "Timestamp", "From", "To", "CallDuration"]
form_values = st.sampled_from(["", "completed", "in-progress", "ringing", "-1", "\u00b2", "machine_start"]) | st.text(max_size=30)
forms = st.dictionaries(st.sampled_from(TWILIO_NAMES) | st.text(min_size=1, max_size=10), form_values, max_size=8)
# Header values HTTP can carry (visible ASCII and obs-text, inner spaces), as bytes.
header_values = st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=60).map(
    lambda t: t.strip(" \t").encode("latin-1"))
# Query-parameter values: digits of every kind (int() refuses some that str.isdigit() accepts), huge numbers, anything.
query_values = st.sampled_from(["", "0", "1", "500", "501", "-1", "--5", "\u00b2", "\u0661", "9" * 5000, "99999999999999999999", " 5"]) | st.text(max_size=30)



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-http")
    from gateway.app import create_app
    from gateway.config import parse_config

    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        with ServerThread(create_app(parse_config(base_config(tmp), env={}))) as running:
            running.errors = errors
            running.http = httpx.Client(base_url=running.url, timeout=30)
            yield running
            running.http.close()
    finally:
        logging.getLogger().removeHandler(errors)


def checked(server, response: httpx.Response) -> httpx.Response:
    """The response, after the checks every fuzzed request must pass."""
    errors = server.errors.take()
    assert response.status_code < 500, (response.status_code, response.text, errors)
    assert errors == []
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["detail"]
    return response


def no_call(server, run_id: str) -> None:
    assert server.http.get(f"/api/v1/calls/{quote(run_id)}", headers=ADMIN).status_code == 404


# --- Twilio -----------------------------------------------------------------------------------


@SHARED
@given(form=forms, answer=st.booleans())
@example(form={"CallSid": "CA1", "SequenceNumber": "\u00b2"}, answer=False)
@example(form={"CallSid": "CA1", "CallStatus": "completed", "CallDuration": "9" * 5000}, answer=False)
@example(form={"CallSid": "\u00e9"}, answer=True)
def test_signed_twilio_forms(server, form, answer):
    """Correctly signed (by twilio's own RequestValidator) forms of any content."""
    run_id = f"fz-tw-{next(RUNS)}"
    url = server.url + (WEBHOOK if answer else STATUS) + run_id
    response = checked(server, server.http.post(url, data=form, headers={"X-Twilio-Signature": twilio_signature(url, form)}))
    assert response.status_code in ((200, 400) if answer else (204, 400))
    if response.status_code == 400:
        no_call(server, run_id)


@SHARED
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
@example(body=b'{"CallSid": "CA1", "CallStatus": "completed", "Nested": {"a": [1, 2]}}')
@example(body=b"[" * 3000)
def test_signed_twilio_json_bodies(server, body):
    """JSON bodies signed through `bodySHA256` (the URL carries the body's hash)."""
    run_id = f"fz-tj-{next(RUNS)}"
    url = f"{server.url}{STATUS}{run_id}?bodySHA256={hashlib.sha256(body).hexdigest()}"
    response = checked(server, server.http.post(url, content=body, headers={
        "Content-Type": "application/json", "X-Twilio-Signature": twilio_signature(url, {})}))
    assert response.status_code in (204, 400)
    if response.status_code == 400:
        no_call(server, run_id)


@SHARED
@given(form=forms, signature=header_values, settings_header=st.none() | header_values,
       content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain", ""]))
@example(form={"CallSid": "CA1", "CallStatus": "completed"}, signature=b"", settings_header=None, content_type="application/json")
def test_unsigned_twilio_requests_are_refused_and_store_nothing(server, form, signature, settings_header, content_type):
    run_id = f"fz-tu-{next(RUNS)}"
    headers = {"X-Twilio-Signature": signature, "Content-Type": content_type}
    if settings_header is not None:
        headers["X-Twilio-Webhooks-Signature-Settings"] = settings_header
    response = checked(server, server.http.post(f"{STATUS}{run_id}", content=urlencode(form).encode(), headers=headers))
    assert response.status_code in (400, 403)
    no_call(server, run_id)


# --- Vonage -----------------------------------------------------------------------------------

vonage_bodies = st.dictionaries(st.sampled_from(["uuid", "call_uuid", "status", "from", "to", "direction", "timestamp", "duration"])
                                | st.text(max_size=8), json_values, max_size=8)


@SHARED
@given(body=vonage_bodies.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200))
@example(body=b'{"uuid": "u-1", "status": "completed", "duration": 1e308}')  # stored as a 309-digit int: 500
@example(body=b'{"uuid": "u-1", "to": [[]]}')
@example(body=b"[" * 3000)
def test_signed_vonage_events(server, body):
    run_id = f"fz-vo-{next(RUNS)}"
    response = checked(server, server.http.post(f"{STATUS}{run_id}", content=body, headers={
        "Authorization": f"Bearer {vonage_jwt(body)}", "Content-Type": "application/json"}))
    assert response.status_code in (204, 400)
    if response.status_code == 400:
        no_call(server, run_id)


@SHARED
@given(query=st.dictionaries(st.sampled_from(["uuid", "from", "to", "conversation_uuid"]) | st.text(min_size=1, max_size=8),
                             st.text(max_size=30), max_size=5))
def test_signed_vonage_answers(server, query):
    run_id = f"fz-va-{next(RUNS)}"
    response = checked(server, server.http.get(f"{WEBHOOK}{run_id}", params=query, headers={"Authorization": f"Bearer {vonage_jwt(b'')}"}))
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        no_call(server, run_id)


@SHARED
@given(authorization=header_values | header_values.map(lambda b: (b"Bearer " + b).strip()),
       body=st.binary(max_size=100))
@example(authorization=("Bearer " + vonage_jwt(b"{}", iat=0)).encode(), body=b"{}")
def test_vonage_requests_without_a_valid_jwt_are_refused_and_store_nothing(server, authorization, body):
    run_id = f"fz-vu-{next(RUNS)}"
    headers = {"Authorization": authorization, "Content-Type": "application/json"}
    response = checked(server, server.http.post(f"{STATUS}{run_id}?provider=vonage", content=body, headers=headers))
    assert response.status_code in (400, 403)
    no_call(server, run_id)


# --- admin API ---------------------------------------------------------------------------------

LISTINGS = ["/api/v1/calls", "/api/v1/campaigns", "/api/v1/deliveries", "/api/v1/campaigns/cmp-none/contacts", "/api/v1/subscriptions"]


@SHARED
@given(path=st.sampled_from(LISTINGS),
       query=st.dictionaries(st.sampled_from(["limit", "cursor", "state", "status", "after", "subscription", "run"]), query_values, max_size=4))
@example(path="/api/v1/calls", query={"limit": "\u00b2"})  # "²".isdigit(), int("²") raised: 500
@example(path="/api/v1/calls", query={"limit": "9" * 5000})  # int() refuses 4300+ digits: 500
@example(path="/api/v1/campaigns", query={"limit": "\u00b2"})
@example(path="/api/v1/deliveries", query={"limit": "\u00b2"})
@example(path="/api/v1/campaigns/cmp-none/contacts", query={"after": "--5"})  # lstrip("-") let it through to int(): 500
@example(path="/api/v1/campaigns/cmp-none/contacts", query={"after": "99999999999999999999"})  # over SQLite's INTEGER
@example(path="/api/v1/campaigns/cmp-none/contacts", query={"after": "\u00b2"})
@example(path="/api/v1/calls", query={"cursor": "W10"})
def test_listing_query_parameters(server, path, query):
    checked(server, server.http.get(path, params=query, headers=ADMIN))


@SHARED
@given(cursor=st.text(max_size=60) | json_values.map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode()))
@example(cursor="WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwieCJd")  # ["2026-01-01T00:00:00+00:00","x"]: well-formed
@example(cursor="WyIyMDI2LTAxLTAxIiwgMV0")  # ["2026-01-01", 1]
def test_pagination_cursors(server, cursor):
    for path in ("/api/v1/calls", "/api/v1/deliveries", "/api/v1/campaigns"):
        response = checked(server, server.http.get(path, params={"cursor": cursor}, headers=ADMIN))
        assert response.status_code in (200, 400)


ADMIN_POSTS = ["/api/v1/campaigns", "/api/v1/deliveries/replay", "/api/v1/calls", "/api/v1/calls/run-none/hangup",
               "/api/v1/calls/run-none/clear", "/api/v1/subscriptions/none/enable", "/api/v1/deliveries/dlv-none/retry",
               "/api/v1/campaigns/cmp-none/pause"]


@SHARED
@given(path=st.sampled_from(ADMIN_POSTS),
       body=json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200)
       | st.dictionaries(st.sampled_from(["to", "from", "provider", "workflow_id", "user_id", "contacts", "name", "subscription",
                                          "since", "until", "reason", "initial_context", "ring_timeout", "options"]),
                         json_values, max_size=6).map(lambda v: json.dumps(v).encode()),
       content_type=st.sampled_from(["application/json", "text/csv", ""]))
@example(path="/api/v1/calls", body=b"[" * 3000, content_type="application/json")  # RecursionError: 500
@example(path="/api/v1/campaigns", body=b"[" * 3000, content_type="application/json")
@example(path="/api/v1/deliveries/replay", body=b"[" * 3000, content_type="application/json")
@example(path="/api/v1/calls/run-none/hangup", body=b"[" * 3000, content_type="application/json")
@example(path="/api/v1/campaigns", body=b"\xff", content_type="text/csv")
def test_admin_bodies(server, path, body, content_type):
    before = server.http.get("/api/v1/campaigns", headers=ADMIN).json()
    response = checked(server, server.http.post(path, content=body, headers={**ADMIN, "Content-Type": content_type}))
    if response.status_code >= 400 and path == "/api/v1/campaigns":
        assert server.http.get("/api/v1/campaigns", headers=ADMIN).json() == before


@SHARED
@given(query=st.dictionaries(st.sampled_from(["expires", "signature"]), query_values, max_size=2),
       kind=st.sampled_from(["recording", "transcript"]))
@example(query={"expires": "\u00b2", "signature": "x"}, kind="recording")
@example(query={"expires": "\u00b2", "signature": "x"}, kind="transcript")
def test_signed_media_links(server, query, kind):
    path = "/api/v1/recordings/run-none.wav" if kind == "recording" else "/api/v1/transcripts/run-none.json"
    response = checked(server, server.http.get(path, params=query))
    assert response.status_code in (401, 403, 404, 400)
