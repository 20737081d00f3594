"""Configuration that tells the truth early: what would fail at send time, or never match, stops
`check-config` and start-up with the key's name; the shipped example config loads and checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from gateway.calls.events import ALL_EVENTS
from gateway.config import ConfigError, load_config, parse_config
from gateway.webhooks.ssrf import configured_destination_problem
from support import ROOT, free_port


def hook(**overrides):
    return {"name": "crm", "events": ["call.ended"], "url": "https://crm.example.com/x", **overrides}


@pytest.mark.parametrize("url,allow,refused", [
    ("http://127.0.0.1:9000/x", [], "the SSRF guard refuses 127.0.0.1: loopback"),
    ("http://[::1]:9000/x", [], "the SSRF guard refuses ::1"),
    ("http://10.1.2.3/x", [], "allow_networks: [10.1.2.3/32]"),
    ("http://169.254.169.254/latest", [], "link-local"),
    ("http://localhost:9000/x", [], "the SSRF guard refuses localhost"),
    ("http://api.localhost:9000/x", [], "the SSRF guard refuses api.localhost"),
    ("http://[::ffff:127.0.0.1]/x", [], "refuses ::ffff:127.0.0.1"),
    ("http://127.0.0.1:9000/x", ["127.0.0.0/8"], None),
    ("http://10.1.2.3/x", ["10.0.0.0/8"], None),
    ("https://8.8.8.8/x", [], None),
    ("https://crm.example.com/x", [], None),  # a name: resolved and vetted at send time
    ("http://{{initial_context.host}}/x", [], None),  # known only at send time
])
def test_webhook_destinations_the_guard_refuses(url, allow, refused):
    data = {"webhooks": [hook(url=url, allow_networks=allow)]}
    if refused is None:
        parse_config(data, env={})
        return
    with pytest.raises(ConfigError) as error:
        parse_config(data, env={})
    assert str(error.value).startswith("webhooks[0] (crm).url: ") and refused in str(error.value)


def test_localhost_is_judged_by_every_address_it_has():
    both = lambda: ["127.0.0.1", "::1"]  # noqa: E731  (a hosts file that maps localhost to both)
    assert "::1" in configured_destination_problem("http://localhost/x", [__import__("ipaddress").ip_network("127.0.0.0/8")],
                                                   localhost=both)
    networks = [__import__("ipaddress").ip_network(n) for n in ("127.0.0.0/8", "::1/128")]
    assert configured_destination_problem("http://localhost/x", networks, localhost=both) is None


def test_dograh_workflow_networks_count(tmp_path):
    """A workflow's allow_networks apply to its imported webhooks before they are judged."""
    flow = tmp_path / "flow.json"
    flow.write_text('{"nodes": [{"id": "n1", "type": "webhook", "data": {"name": "CRM", "endpoint_url": "http://127.0.0.1:9/x",'
                    ' "http_method": "POST", "enabled": true}}], "edges": []}')
    with pytest.raises(ConfigError, match=r"url: the SSRF guard refuses 127\.0\.0\.1"):
        parse_config({"workflows": [str(flow)]}, env={})
    parse_config({"workflows": [{"path": str(flow), "allow_networks": ["127.0.0.0/8"]}]}, env={})


@pytest.mark.parametrize("pattern,message", [
    ("call.endd", "'call.endd' matches no event the gateway emits; did you mean 'call.ended'?"),
    ("calls.*", "'calls.*' matches no event"),
    ("conversation.transcripts", "did you mean 'conversation.transcript'?"),
])
def test_event_patterns_that_match_nothing(pattern, message):
    with pytest.raises(ConfigError) as error:
        parse_config({"webhooks": [hook(events=["call.*", pattern])]}, env={})
    assert str(error.value).startswith("webhooks[0].events[1]: ") and message in str(error.value)


def test_every_event_name_and_glob_is_accepted():
    parse_config({"webhooks": [hook(events=[*ALL_EVENTS, "*", "call.*", "campaign.*", "batch.*", "webhook.*",
                                            "conversation.*", "call.[ab]*"])]}, env={})


@pytest.mark.parametrize("template,message", [
    ("{{call.stat}}", "call has no field 'stat' in {{call.stat}}; did you mean call.state?"),
    ("{{call.duration.seconds}}", "call.duration is a single value"),
    ("{{event.typ}}", "did you mean event.type?"),
    ("{{workflow_run_id.x}}", "'workflow_run_id' is a single value"),
    ("{{secret.NOPE}}", "secret 'NOPE' is not set"),
])
def test_template_paths_that_cannot_exist(template, message):
    with pytest.raises(ConfigError) as error:
        parse_config({"webhooks": [hook(payload_template={"x": template})]}, env={})
    assert message in str(error.value) and "webhooks[0]" in str(error.value)


def test_free_form_template_paths_are_accepted():
    payload = {"a": "{{initial_context.any.depth.0}}", "b": "{{gathered_context.crm_status_code}}", "c": "{{call.media.recording_url}}",
               "d": "{{event.data.anything}}", "e": "{{call.initial_context.tenant}}", "f": "{{cost_info.total}}",
               "g": "{{annotations.x}}", "h": "{{call.state}}", "i": "{{event.type}}", "j": "{{recording_url}}"}
    parse_config({"webhooks": [hook(payload_template=payload)]}, env={})


def test_check_config_refuses_with_the_key(tmp_path):
    path = tmp_path / "g.yaml"
    for webhooks, message in (
        ([hook(url="http://127.0.0.1:9000/x")], "webhooks[0] (crm).url: the SSRF guard refuses 127.0.0.1"),
        ([hook(events=["call.endd"])], "webhooks[0].events[0]: 'call.endd' matches no event"),
        ([hook(payload_template={"s": "{{call.stat}}"})], "webhooks[0].payload_template: s: call has no field 'stat'"),
    ):
        path.write_text(yaml.safe_dump({"webhooks": webhooks}))
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "--config", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        served = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--host", "127.0.0.1",
                                 "--port", str(free_port())], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert served.returncode == 2 and message in served.stderr  # start-up refuses the same way


EXAMPLE_ENV = {"GATEWAY_API_KEY": "a" * 40, "GATEWAY_SECRET_KEY": "s" * 40, "TWILIO_AUTH_TOKEN": "t" * 32,
               "VONAGE_SIGNATURE_SECRET": "v" * 32, "CRM_TOKEN": "c" * 20, "CRM_WEBHOOK_SECRET": "whsec_" + "a" * 32}


def test_the_example_config_loads_and_checks():
    example = ROOT / "gateway.example.yaml"
    config = load_config(example, env=EXAMPLE_ENV)
    assert config.providers.twilio and config.providers.vonage and config.webhooks[0].name == "crm"
    assert config.secret_values()["CRM_TOKEN"] == "c" * 20
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "--config", str(example)],
                            capture_output=True, text=True, timeout=60, env={**__import__("os").environ, **EXAMPLE_ENV})
    assert result.returncode == 0 and "config OK" in result.stdout, result.stderr


def test_the_example_config_comments_every_section():
    from gateway.config import GatewayConfig

    text = (ROOT / "gateway.example.yaml").read_text()
    sections = set(GatewayConfig.model_fields) - {"secrets_file", "workflows", "stream_token_ttl"}  # rarely needed: docs only
    for name in sections:
        assert f"\n{name}:" in text, name
