"""Subscription config: defaults, validation errors that name the key, YAML, Dograh import."""

from __future__ import annotations

import base64
import ipaddress
import json

import pytest

from gateway.webhooks.subscription import (
    ApiKeyAuth,
    BasicAuth,
    BearerTokenAuth,
    CustomHeaderAuth,
    HexSigning,
    NoAuth,
    NoSigning,
    StandardSigning,
    Subscription,
    SubscriptionConfigError,
    load_dograh_workflow,
    load_subscriptions,
    parse_subscriptions,
)
from gateway.webhooks.templates import Renderer

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FULL_YAML = """
webhooks:
  - name: crm
    enabled: true
    events: ["call.ended", "call.voicemail_detected", "conversation.*"]
    method: POST
    url: https://crm.example.com/calls/{{workflow_run_id}}?tenant={{initial_context.tenant}}
    headers: {X-Tenant: "{{initial_context.tenant}}"}
    payload_template: {run_id: "{{workflow_run_id}}", outcome: "{{gathered_context.resolution}}", duration: "{{call.duration}}"}
    auth: {type: bearer_token, token: "{{secret.CRM_TOKEN}}"}
    signing: {scheme: standard, secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}
    timeout: 30
    retry: {schedule: [1, 5, 25, 120, 600, 3600], jitter: 0.2, total_timeout: 86400}
    success: {status: ["2xx"], expression: "ok == `true`"}
    response_mapping: {customer_tier: "data.tier"}
    store_raw_response: false
    ordered: true
    allow_networks: []
"""


def minimal(**fields) -> dict:
    return {"name": "crm", "events": ["call.ended"], "url": "https://crm.example.com/hook", **fields}


def errors_for(**fields) -> str:
    with pytest.raises(SubscriptionConfigError) as error:
        parse_subscriptions({"webhooks": [minimal(**fields)]})
    return str(error.value)


def test_full_example_loads_from_yaml(tmp_path):
    path = tmp_path / "webhooks.yaml"
    path.write_text(FULL_YAML)
    [crm] = load_subscriptions(path)
    assert crm.name == "crm" and crm.method == "POST"
    assert isinstance(crm.auth, BearerTokenAuth)
    assert isinstance(crm.signing, StandardSigning) and crm.signing.secrets == [WHSEC]
    assert crm.success.expression == "ok == `true`"
    assert crm.secret_names() == {"CRM_TOKEN"}
    assert crm.matches("conversation.transcript") and crm.matches("call.ended") and not crm.matches("call.started")


def test_defaults():
    sub = Subscription.model_validate(minimal())
    assert sub.enabled is True and sub.method == "POST" and sub.timeout == 30
    assert sub.retry.schedule == [1, 5, 25, 120, 600, 3600]
    assert sub.retry.jitter == 0.2 and sub.retry.total_timeout == 86400
    assert sub.success.status == ["2xx"] and sub.success.expression is None
    assert isinstance(sub.signing, StandardSigning) and sub.signing.secrets == []
    assert isinstance(sub.auth, NoAuth)
    assert sub.ordered is True and sub.store_raw_response is False and sub.allow_networks == []
    assert sub.payload_template is None and sub.headers == {} and sub.response_mapping == {}


def test_signing_scheme_defaults_to_standard_and_hex_header_default():
    assert isinstance(Subscription.model_validate(minimal(signing={"secrets": [WHSEC]})).signing, StandardSigning)
    hex_signing = Subscription.model_validate(minimal(signing={"scheme": "hmac_sha256_hex", "secret": "k"})).signing
    assert isinstance(hex_signing, HexSigning) and hex_signing.header == "X-Webhook-Signature"
    assert isinstance(Subscription.model_validate(minimal(signing={"scheme": "none"})).signing, NoSigning)


def test_disabled_subscriptions_match_nothing():
    assert not Subscription.model_validate(minimal(enabled=False, events=["*"])).matches("call.ended")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"retry": {"shedule": [1]}}, "webhooks[0].retry.shedule: unknown key"),
        ({"colour": "blue"}, "webhooks[0].colour: unknown key"),
        ({"auth": {"type": "bearer_token", "tokn": "x", "token": "y"}}, "webhooks[0].auth.tokn: unknown key"),
        ({"auth": {"type": "kerberos"}}, "webhooks[0].auth: unknown auth type"),
        ({"signing": {"scheme": "rsa"}}, "webhooks[0].signing: unknown signing scheme"),
        (
            {"auth": {"type": "header", "headers": {"X-A": "{{_auth.uuid}}"}, "variables": {"bad name": "x"}}},
            "webhooks[0].auth.variables.bad name",
        ),
        ({"signing": {"scheme": "standard", "secret": WHSEC}}, "webhooks[0].signing.secret: unknown key"),
        ({"name": "CRM Hook"}, "webhooks[0].name"),
        ({"events": []}, "webhooks[0].events"),
        ({"events": ["Call Ended"]}, "event pattern 'Call Ended'"),
        ({"events": ["call.[ab"]}, "'[' without ']'"),
        ({"method": "TRACE"}, "webhooks[0].method"),
        ({"url": "ftp://crm.example.com/x"}, "webhooks[0].url: url must start with http"),
        ({"url": "https://crm.example.com/{{nope}}"}, "webhooks[0].url: unknown variable 'nope'"),
        ({"headers": {"X-A": "{{call.}}"}}, "webhooks[0].headers.X-A: malformed path"),
        ({"headers": {"Bad Header": "x"}}, "not a valid HTTP header name"),
        ({"payload_template": {"a": {"b": "{{ call.duration"}}}, "webhooks[0].payload_template: a.b: '{{' without"),
        ({"auth": {"type": "bearer_token", "token": "{{secret}}"}}, "webhooks[0].auth.token: secrets are written"),
        ({"timeout": 0}, "webhooks[0].timeout"),
        ({"retry": {"jitter": 1.5}}, "webhooks[0].retry.jitter"),
        ({"retry": {"schedule": [-1]}}, "webhooks[0].retry.schedule[0]"),
        ({"success": {"status": ["2xx", "6xx"]}}, "webhooks[0].success.status: status class '6xx'"),
        ({"success": {"status": ["3xx"]}}, "never success"),
        ({"success": {"status": ["200-399"]}}, "never success"),
        ({"success": {"expression": "ok == "}}, "webhooks[0].success.expression: invalid JMESPath"),
        ({"response_mapping": {"tier": "data.[["}}, "webhooks[0].response_mapping: invalid JMESPath"),
        ({"response_mapping": {"bad key": "a"}}, "response_mapping key 'bad key'"),
        ({"allow_networks": ["10.0.0.0/33"]}, "webhooks[0].allow_networks: '10.0.0.0/33' is not a CIDR"),
        ({"allow_networks": ["10.0.0.1/8"]}, "has host bits set"),
        (
            {"signing": {"secrets": ["whsec_" + base64.b64encode(b"short").decode()]}},
            "webhooks[0].signing.secrets: secrets[0]: a signing secret decodes to 24 to 64 bytes, not 5",
        ),
        ({"signing": {"secrets": ["not-a-whsec"]}}, "secrets[0]: a signing secret starts with 'whsec_'"),
        ({"signing": {"secrets": ["whsec_{{secret.A}}x"]}}, "exactly one {{secret.NAME}}"),
        ({"auth": {"type": "header", "headers": {"X-S": "{{hmac_sha256(secret.K, _auth.nonce_x + body)}}"}}}, "unknown variable 'body'"),
        ({"auth": {"type": "mtls"}}, "webhooks[0].auth.cert: required key is missing"),
        (
            {"auth": {"type": "oauth2_client_credentials", "token_url": "file:///etc/passwd", "client_id": "a", "client_secret": "b"}},
            "token_url must start with http",
        ),
    ],
)
def test_config_errors_name_the_key(fields, message):
    assert message in errors_for(**fields)


def test_secret_values_are_not_echoed_in_errors():
    secret = "whsec_" + base64.b64encode(b"k" * 8).decode()
    assert secret not in errors_for(signing={"secrets": [secret]})


def test_names_must_be_unique():
    with pytest.raises(SubscriptionConfigError, match="'crm' is used twice"):
        parse_subscriptions({"webhooks": [minimal(), minimal()]})


def test_valid_variants():
    sub = Subscription.model_validate(
        minimal(
            method="patch",
            events=["call.*", "conversation.intent_?etected", "batch.[!x]*"],
            allow_networks=["127.0.0.0/8", "fd00::/8"],
            success={"status": ["200", "201-204", "409"]},
            auth={
                "type": "header",
                "variables": {"ts": "{{_auth.timestamp}}"},
                "headers": {"X-Sig": "{{hmac_sha256(secret.K, vars.ts + '.' + _request.body)}}"},
            },
            signing={"secrets": [WHSEC, "{{secret.NEXT_WHSEC}}"]},
        )
    )
    assert sub.method == "PATCH"
    assert sub.allow_networks == [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert sub.matches("batch.completed") and sub.matches("conversation.intent_detected")
    assert sub.secret_names() == {"K", "NEXT_WHSEC"}


def test_load_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("webhooks: [")
    with pytest.raises(SubscriptionConfigError, match="bad.yaml"):
        load_subscriptions(path)
    with pytest.raises(SubscriptionConfigError, match="webhooks"):
        load_subscriptions({"webhooks": "nope"})


DOGRAH_WORKFLOW = {
    "nodes": [
        {"id": "start-1", "type": "startCall", "data": {"name": "Start", "prompt": "hi"}},
        {
            "id": "webhook-1",
            "type": "webhook",
            "position": {"x": 600, "y": 0},
            "data": {
                "name": "Notify CRM",
                "enabled": True,
                "http_method": "POST",
                "endpoint_url": "https://your-service.com/webhook/dograh",
                "payload_template": {
                    "run_id": "{{workflow_run_id}}",
                    "customer": "{{initial_context.customer_name}}",
                    "outcome": "{{gathered_context.resolution | default('unknown') }}",
                },
                "custom_headers": [{"key": "X-Source", "value": "dograh"}],
                "credential_uuid": "cred-123",
                "retry_config": {"enabled": True, "max_retries": 2, "retry_delay_seconds": 10},
            },
        },
        {
            "id": "webhook-2",
            "type": "webhook",
            "data": {"name": "Notify CRM", "enabled": False, "http_method": "PUT", "endpoint_url": "https://b.example.com/x"},
        },
    ],
    "edges": [],
}


def test_dograh_workflow_import(tmp_path):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps({"name": "Collections", "workflow_definition": DOGRAH_WORKFLOW}))
    credentials = {"cred-123": {"credential_type": "api_key", "credential_data": {"header_name": "X-Key", "api_key": "k-1"}}}
    first, second = load_dograh_workflow(path, credentials)

    assert first.name == "notify-crm" and second.name == "notify-crm-2"
    assert first.events == ["call.ended"] and first.enabled and not second.enabled
    assert first.method == "POST" and second.method == "PUT"
    assert first.url == "https://your-service.com/webhook/dograh"
    assert first.headers == {"X-Source": "dograh"}
    assert Renderer({}).value(first.payload_template["outcome"]) == "unknown"
    assert isinstance(first.auth, ApiKeyAuth) and first.auth.header == "X-Key" and first.auth.value == "k-1"
    assert isinstance(first.signing, NoSigning)
    assert first.retry.schedule == [10, 10] and first.retry.jitter == 0
    assert second.retry.schedule == []  # Dograh does not retry unless asked
    assert second.payload_template == {}
    assert isinstance(second.auth, NoAuth)


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        ({"credential_type": "BEARER_TOKEN", "credential_data": {"token": "t"}}, BearerTokenAuth(type="bearer_token", token="t")),
        (
            {"credential_type": "basic_auth", "credential_data": {"username": "u", "password": "p"}},
            BasicAuth(type="basic_auth", username="u", password="p"),
        ),
        (
            {"credential_type": "custom_header", "credential_data": {"header_name": "X-H", "header_value": "v"}},
            CustomHeaderAuth(type="custom_header", name="X-H", value="v"),
        ),
        ({"credential_type": "api_key", "credential_data": {"api_key": "k"}}, ApiKeyAuth(type="api_key", header="X-API-Key", value="k")),
        ({"credential_type": "none"}, NoAuth()),
    ],
)
def test_dograh_credential_types(credential, expected):
    node = {"id": "w", "type": "webhook", "data": {"name": "w", "endpoint_url": "https://a.example/x", "credential": credential}}
    [sub] = load_dograh_workflow({"nodes": [node]})
    assert sub.auth == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"endpoint_url": "https://a.example/x", "credential_uuid": "missing"},
            "nodes[0] (w).data.credential_uuid: credential 'missing' was not supplied",
        ),
        ({"endpoint_url": "https://a.example/x", "retry_config": {"enabled": True, "backoff": 2}}, "retry_config.backoff: unknown key"),
        ({"endpoint_url": "ftp://a.example/x"}, "nodes[0] (w).data.endpoint_url: url must start with http"),
        ({"endpoint_url": "https://a.example/x", "http_method": "TRACE"}, "nodes[0] (w).data.http_method"),
        ({"endpoint_url": "https://a.example/{{nope}}"}, "unknown variable 'nope'"),
        ({"endpoint_url": "https://a.example/x", "credential": {"credential_type": "oauth"}}, "unknown credential_type 'oauth'"),
        ({"endpoint_url": "https://a.example/x", "credential": {"credential_type": "bearer_token", "credential_data": {}}}, "lacks 'token'"),
    ],
)
def test_dograh_errors_name_node_and_key(data, message):
    with pytest.raises(SubscriptionConfigError) as error:
        load_dograh_workflow({"nodes": [{"id": "w", "type": "webhook", "data": {"name": "w", **data}}]})
    assert message in str(error.value)


def test_dograh_needs_nodes():
    with pytest.raises(SubscriptionConfigError, match="nodes"):
        load_dograh_workflow({"edges": []})
