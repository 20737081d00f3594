"""Schemathesis against a real `gateway serve`: every admin operation, a bounded derandomized
budget of generated requests (valid and invalid), signed in with the admin key. No answer may
be a 5xx, and every answer must conform to the document (status, content type, headers, body).

The gateway dials through a local stand-in of Twilio's REST API, so placing a call or a campaign
succeeds as it would in production; one webhook subscription posts to a local receiver."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from schemathesis.core import NOT_SET
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dial.campaign_support import dial_config
from dial.fakes import FakeTwilio
from gateway.api.openapi import OPENAPI_PATH, document
from support import API_KEY, GatewayProcess, Receiver, base_config, twilio_status_callback, wait_until

EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The gateway, with a call that completed (its webhook delivered), a placed call, a campaign."""
    tmp = tmp_path_factory.mktemp("fuzz")
    with FakeTwilio() as twilio, Receiver() as receiver:
        crm = {"name": "crm", "events": ["call.*"], "url": receiver.url + "/hooks/{{workflow_run_id}}",
               "allow_networks": ["127.0.0.0/8"], "timeout": 5,
               "retry": {"schedule": [0.1], "jitter": 0, "total_timeout": 5}}
        proc = GatewayProcess(tmp, base_config(tmp, webhooks=[crm], **dial_config(twilio))).start()
        try:
            for status in ("ringing", "in-progress", "completed"):
                twilio_status_callback(proc, "run-seed", status, CallDuration="9")
            proc.delivery = wait_until(lambda: admin(proc, "GET", "/api/v1/deliveries?status=succeeded").json()["deliveries"],
                                       20, "a delivery")[0]["id"]
            placed = admin(proc, "POST", "/api/v1/calls", json={"to": "+14155550100", "workflow_id": "wf", "user_id": "u"})
            assert placed.status_code == 201, placed.text
            proc.placed = placed.json()["workflow_run_id"]
            made = admin(proc, "POST", "/api/v1/campaigns", json={"workflow_id": "wf", "user_id": "u",
                                                                   "contacts": [{"phone": "+14155550101"}]})
            assert made.status_code == 201, made.text
            proc.campaign = made.json()["id"]
            yield proc
        finally:
            proc.stop()
        assert "Traceback" not in proc.log(), proc.log()[-4000:]


def admin(proc, method, path, **kw):
    return httpx.request(method, proc.url + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30, **kw)


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(served.url + "/api/v1/openapi.json")


OPERATIONS = [(method.upper(), path) for path, item in document()["paths"].items() for method in item]
RUNS = [(method, path, mode) for method, path in OPERATIONS for mode in GenerationMode
        if mode is GenerationMode.POSITIVE or path != OPENAPI_PATH]  # nothing in it can be made invalid


@pytest.mark.parametrize(("method", "path", "mode"), RUNS, ids=[f"{m} {p} {mode.value}" for m, p, mode in RUNS])
def test_the_admin_api_holds_to_its_document(api_schema, served, method, path, mode):
    """Schemathesis's strategies under plain Hypothesis (its pytest plugin does not load under
    this pytest): a bounded, derandomized budget per operation and generation mode."""
    operation = api_schema[path][method]

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        # The operations take no header parameters; invalid header names the negative mode makes
        # up are refused by the HTTP server (uvicorn's 400, text/plain) before the app sees them.
        case.headers = {}
        case.call_and_validate(base_url=served.url, headers={"Authorization": f"Bearer {API_KEY}"}, checks=CHECKS,
                               timeout=30)

    check()


def test_the_seeded_objects_hold_to_the_document(api_schema, served):
    """Every operation once on objects that exist (generated ids mostly find nothing)."""
    ids = {"workflow_run_id": "run-seed", "delivery_id": served.delivery, "name": "crm", "campaign_id": served.campaign}
    for method, path in OPERATIONS:
        operation = api_schema[path][method]
        params = {name: ids[name] for name in ids if "{" + name + "}" in path}
        if path == "/api/v1/calls/{workflow_run_id}/hangup":
            params = {"workflow_run_id": served.placed}
        body = {"subscription": "crm", "since": "2020-01-01T00:00:00Z"} if path.endswith("/replay") else NOT_SET
        case = operation.Case(path_parameters=params, body=body, media_type="application/json" if body is not NOT_SET else None)
        response = case.call(base_url=served.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        assert response.status_code < 500, (method, path, response.text)
        case.validate_response(response, checks=CHECKS)
