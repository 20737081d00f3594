"""Templates: type preservation, defaults, text and URL rendering, validation, secrets, redaction."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.webhooks.templates import (
    Redactor,
    Renderer,
    TemplateError,
    secret_names,
    validate_template,
)

CONTEXT = {
    "workflow_run_id": 4711,
    "workflow_name": "Collections",
    "call": {"duration": 93, "voicemail": False, "from": "+15550100", "legs": [{"sid": "CA1"}, {"sid": "CA2"}]},
    "initial_context": {"tenant": "acme corp", "customer_name": "Zoë", "path": "a/b?c=d&e#f"},
    "gathered_context": {"resolution": "paid", "amount": 12.5, "tags": ["a", "b"], "nothing": None},
    "recording_url": None,
}


def render(template, secrets=None):
    return Renderer(CONTEXT, secrets).value(template)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{workflow_run_id}}", 4711),
        ("{{call.duration}}", 93),
        ("{{call.voicemail}}", False),
        ("{{gathered_context.amount}}", 12.5),
        ("{{gathered_context.tags}}", ["a", "b"]),
        ("{{call.legs.1.sid}}", "CA2"),
        ("{{ initial_context }}", CONTEXT["initial_context"]),
        ("{{gathered_context.missing}}", None),
        ("{{recording_url}}", None),
        ("{{call.legs.9.sid}}", None),
    ],
)
def test_exact_placeholder_keeps_json_type(template, expected):
    assert render(template) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('{{gathered_context.missing | "n/a"}}', "n/a"),
        ("{{gathered_context.missing | 'single'}}", "single"),
        ("{{gathered_context.missing | 0}}", 0),
        ("{{gathered_context.missing | 2.5}}", 2.5),
        ("{{gathered_context.missing | true}}", True),
        ("{{gathered_context.missing | null}}", None),
        ("{{gathered_context.missing | not given}}", "not given"),
        ("{{gathered_context.nothing | fallback}}", "fallback"),
        ("{{recording_url | \"\"}}", ""),
        ("{{gathered_context.resolution | unused}}", "paid"),
        ('{{gathered_context.missing | "a|b"}}', "a|b"),
        ("{{ gathered_context.missing | default('jinja') }}", "jinja"),
        ("{{gathered_context.missing | default(3)}}", 3),
    ],
)
def test_defaults_apply_to_missing_and_null(template, expected):
    assert render(template) == expected


def test_text_interpolation():
    assert render("run {{workflow_run_id}} took {{call.duration}}s") == "run 4711 took 93s"
    assert render("tags={{gathered_context.tags}}") == 'tags=["a","b"]'
    assert render("ctx={{call.legs.0}}") == 'ctx={"sid":"CA1"}'
    assert render("rec=[{{recording_url}}]") == "rec=[]"
    assert render("vm={{call.voicemail}} amount={{gathered_context.amount}}") == "vm=false amount=12.5"
    assert render("{{workflow_run_id}}{{workflow_name}}") == "4711Collections"
    assert render("plain text") == "plain text"


def test_nested_structures_are_walked_and_keys_rendered():
    template = {
        "run_id": "{{workflow_run_id}}",
        "customer": {"name": "{{initial_context.customer_name}}", "tags": ["{{gathered_context.tags}}", "x-{{call.duration}}"]},
        "key_{{workflow_name}}": 1,
        "number": 7,
        "flag": True,
    }
    assert render(template) == {
        "run_id": 4711,
        "customer": {"name": "Zoë", "tags": [["a", "b"], "x-93"]},
        "key_Collections": 1,
        "number": 7,
        "flag": True,
    }


def test_url_values_are_percent_encoded():
    renderer = Renderer(CONTEXT)
    url = renderer.url(
        "https://crm.example.com/t/{{initial_context.tenant}}/{{initial_context.path}}"
        "?who={{initial_context.customer_name}}&id={{workflow_run_id}}"
    )
    assert url == "https://crm.example.com/t/acme%20corp/a%2Fb%3Fc%3Dd%26e%23f?who=Zo%C3%AB&id=4711"


def test_url_dot_segments_cannot_traverse():
    renderer = Renderer({"initial_context": {"up": "..", "here": "."}})
    assert renderer.url("https://x.example/a/{{initial_context.up}}/{{initial_context.here}}/b") == (
        "https://x.example/a/%2E%2E/%2E/b"
    )


@given(st.text())
def test_url_placeholder_is_one_opaque_segment(value):
    url = Renderer({"initial_context": {"v": value}}).url("https://x.example/p/{{initial_context.v}}?q=1")
    segment = url.removeprefix("https://x.example/p/").removesuffix("?q=1")
    assert not set("/?#&= ") & set(segment)
    assert unquote(segment) == value


def test_hostile_values_are_data_not_templates():
    context = {"initial_context": {"evil": "{{secret.TOKEN}}", "obj": {"__class__": "x"}}}
    renderer = Renderer(context, {"TOKEN": "s3cr3t"})
    assert renderer.value("{{initial_context.evil}}") == "{{secret.TOKEN}}"
    assert renderer.text("x {{initial_context.evil}}") == "x {{secret.TOKEN}}"
    assert renderer.used_secrets == set()
    # only mappings and lists are walked, never Python attributes
    assert Renderer({"call": "text"}).value("{{call.__class__}}") is None
    assert Renderer({"call": {"a": 1}}).value("{{call.items}}") is None


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{{unknown}}", "unknown variable 'unknown'"),
        ("{{}}", "empty placeholder"),
        ("{{ call..duration }}", "malformed path"),
        ("{{call.dur ation}}", "malformed path"),
        ("{{ 1abc }}", "malformed path"),
        ("hello {{call.duration", "without a matching"),
        ("{{secret}}", "secrets are written"),
        ("{{secret.A.B}}", "secrets are written"),
        ("{{hmac_sha256(secret.K, call)}}", "unknown function"),
    ],
)
def test_validation_names_the_location(template, fragment):
    with pytest.raises(TemplateError) as error:
        validate_template({"outer": [template]}, "payload_template")
    assert str(error.value).startswith("payload_template.outer[0]: ")
    assert fragment in str(error.value)


def test_validation_checks_keys_and_accepts_good_templates():
    validate_template({"ok": "{{call.duration | 0}}", "list": ["{{secret.X}}", 3, None]}, "payload_template")
    with pytest.raises(TemplateError, match=r"payload_template\.\{\{nope\}\} \(key\): unknown variable"):
        validate_template({"{{nope}}": 1}, "payload_template")


def test_secrets_resolve_and_are_recorded():
    renderer = Renderer(CONTEXT, {"CRM_TOKEN": "tok-123", "OTHER": "unused"})
    assert renderer.value("{{secret.CRM_TOKEN}}") == "tok-123"
    assert renderer.text("Bearer {{secret.CRM_TOKEN}}") == "Bearer tok-123"
    assert renderer.used_secrets == {"tok-123"}


def test_missing_secret_is_an_error_without_values():
    with pytest.raises(TemplateError, match="headers.Authorization: secret 'NOPE' is not set"):
        Renderer(CONTEXT, {"A": "value-a"}).text("{{secret.NOPE}}", "headers.Authorization")


def test_secrets_do_not_come_from_the_context():
    with pytest.raises(TemplateError):
        Renderer({"secret": {"X": "from-context"}}, {}).value("{{secret.X}}")


def test_secret_names_lists_references():
    assert secret_names({"a": "{{secret.A}}", "b": ["x {{secret.B}} {{call.duration}}"]}) == {"A", "B"}


def test_redactor_replaces_secrets_and_their_encodings():
    redactor = Redactor(["p@ss/w rd", "tok\"en"])
    text = 'url=https://x/?k=p%40ss%2Fw%20rd body={"t":"tok\\"en"} raw=p@ss/w rd plus=p%40ss%2Fw+rd'
    redacted = redactor.text(text)
    assert "p@ss" not in redacted and "p%40ss" not in redacted and "tok" not in redacted
    assert redacted.count("[redacted]") == 4
    assert redactor.value({"k": ["tok\"en", 1]}) == {"k": ["[redacted]", 1]}
    assert Redactor([]).text("unchanged") == "unchanged"
    assert Redactor([""]).text("unchanged") == "unchanged"
