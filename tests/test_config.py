"""The configuration schema: defaults, env interpolation, errors that name the key."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_config, parse_config, with_dev_secrets


def test_no_file_at_all_gives_working_defaults():
    config = load_config(None, env={})
    assert config.store == "sqlite:///data/gateway.db"
    assert config.agent.url == "echo"
    assert config.agent.audio.encoding == "pcm16" and config.agent.audio.sample_rate == 16000
    assert config.listen.port == 8000
    assert config.providers.twilio is None and config.webhooks == []


def test_env_interpolation_with_defaults():
    data = {"api_key": "${KEY}", "public_url": "${URL:-https://gw.example.com}", "listen": {"port": 9000}}
    config = parse_config(data, env={"KEY": "s3cret"})
    assert config.api_key.get_secret_value() == "s3cret"
    assert config.public_url == "https://gw.example.com"


def test_unset_variable_names_key_and_variable():
    with pytest.raises(ConfigError, match=r"providers\.twilio\.auth_token: environment variable TWILIO_TOKEN is not set"):
        parse_config({"providers": {"twilio": {"account_sid": "AC1", "auth_token": "${TWILIO_TOKEN}"}}}, env={})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"listen": {"prot": 1}}, r"listen\.prot: unknown key"),
        ({"listen": {"port": "many"}}, r"listen\.port: "),
        ({"providers": {"twilio": {"account_sid": "AC1"}}}, r"providers\.twilio\.auth_token: required key is missing"),
        ({"providers": {"vonage": {"application_id": "app"}}}, r"providers\.vonage\.signature_secret: required key is missing"),
        ({"agent": {"url": "http://agent"}}, r"agent\.url: "),
        ({"agent": {"audio": {"sample_rate": 11025}}}, r"agent\.audio\.sample_rate: "),
        ({"public_url": "gw.example.com"}, r"public_url: "),
        ({"store": "mysql://x"}, r"store: "),
        ({"trusted_proxies": ["not-a-cidr"]}, r"trusted_proxies\[0\]"),
        ({"limits": {"read_timeout_seconds": 0}}, r"limits\.read_timeout_seconds: "),
        ({"limits": {"media_token_seconds": "soon"}}, r"limits\.media_token_seconds: "),
        ({"limits": {"max_unverified_media_sockets": 0}}, r"limits\.max_unverified_media_sockets: "),
        ([1, 2], r"must be a mapping"),
        ({"delivery": {"lease_seconds": 35}, "webhooks": [{"name": "slow", "events": ["call.*"], "url": "https://h.example/x",
                                                         "timeout": 30}]},
         r"delivery\.lease_seconds: 35 is shorter than the longest webhook timeout \(slow: 30 s\) \+ 10 s"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data, env={})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"providers": {"twilio": {"account_sid": "AC1", "auth_token": ""}}}, r"providers\.twilio\.auth_token: must not be empty"),
        ({"providers": {"vonage": {"signature_secret": "  "}}}, r"providers\.vonage\.signature_secret: must not be empty"),
        ({"providers": {"vonage": {"signature_secret": "s", "private_key": ""}}}, r"providers\.vonage\.private_key: must not be empty"),
        ({"api_key": ""}, r"api_key: must not be empty"),
        ({"secret_key": ""}, r"secret_key: must not be empty"),
        ({"dial": {"webhook_secret": ""}}, r"dial\.webhook_secret: must not be empty"),
        ({"secrets": {"CRM": ""}}, r"secrets\.CRM: must not be empty"),
        ({"api_key": "${KEY:-}"}, r"api_key: must not be empty"),
    ],
)
def test_an_empty_secret_is_refused_naming_its_key(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data, env={})


def test_an_empty_webhook_secret_from_the_environment_is_refused_naming_it(monkeypatch):
    data = {"webhooks": [{"name": "crm", "events": ["call.*"], "url": "https://crm.example.com/x",
                          "auth": {"type": "bearer_token", "token": "{{secret.CRM}}"}}]}
    monkeypatch.setenv("GATEWAY_SECRET_CRM", "")
    with pytest.raises(ConfigError, match=r"webhooks\[0\] \(crm\): secret 'CRM' is empty"):
        parse_config(data, env={})


def test_a_lease_that_covers_the_longest_timeout_is_accepted():
    hook = {"name": "slow", "events": ["call.*"], "url": "https://h.example/x", "timeout": 30}
    assert parse_config({"delivery": {"lease_seconds": 40}, "webhooks": [hook]}, env={}).delivery.lease_seconds == 40
    assert parse_config({"delivery": {"lease_seconds": 0}, "webhooks": [hook]}, env={}).delivery.lease_seconds == 0


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: {host: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml", env={})


def test_gateway_config_env_names_the_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("listen: {port: 9123}\n")
    assert load_config(None, env={"GATEWAY_CONFIG": str(path)}).listen.port == 9123


def test_dev_secrets_generated_once_and_reused(tmp_path, caplog):
    config = parse_config({"data_dir": str(tmp_path)}, env={})
    first = with_dev_secrets(config)
    second = with_dev_secrets(config)
    assert first.api_key.get_secret_value() == second.api_key.get_secret_value()
    stored = json.loads((tmp_path / "dev-secrets.json").read_text())
    assert stored["api_key"] == first.api_key.get_secret_value()
    assert (tmp_path / "dev-secrets.json").stat().st_mode & 0o777 == 0o600
    assert "DEVELOPMENT SECRETS" in caplog.text
    assert stored["api_key"] not in caplog.text


def test_check_config_command_prints_the_same_message(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("providers:\n  twilio: {account_sid: AC1}\n")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "--config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "providers.twilio.auth_token: required key is missing" in result.stderr
    path.write_text("providers:\n  twilio: {account_sid: AC1, auth_token: ''}\n")
    empty = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "--config", str(path)],
                           capture_output=True, text=True)
    assert empty.returncode == 2 and "providers.twilio.auth_token: must not be empty" in empty.stderr
    path.write_text("listen: {port: 9000}\n")
    ok = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "--config", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0 and "config OK" in ok.stdout


def test_the_readme_config_example_loads(tmp_path):
    """The README's annotated config is a real config: it loads, with its `${VAR}`s set."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("```yaml\npublic_url:") + len("```yaml\n")
    block = readme[start:readme.index("```", start)]
    path = tmp_path / "gateway.yaml"
    path.write_text(block)
    env = {"GATEWAY_API_KEY": "k" * 32, "GATEWAY_SECRET_KEY": "s" * 32, "TWILIO_AUTH_TOKEN": "t" * 32,
           "VONAGE_SIGNATURE_SECRET": "v" * 32, "CRM_WEBHOOK_SECRET": "whsec_" + "w" * 32}
    config = load_config(str(path), env=env)
    assert config.providers.twilio.auth_token.get_secret_value() == "t" * 32
    assert config.webhooks[0].name == "crm" and config.secret_values()["CRM_WEBHOOK_SECRET"].startswith("whsec_")
    assert config.delivery.processes == 0 and config.store == "sqlite:///data/gateway.db"


def test_dev_provider_credentials_only_without_a_config_file(tmp_path):
    from gateway.config import DevSecrets

    config = parse_config({"data_dir": str(tmp_path)}, env={})
    (tmp_path / "dev-secrets.json").write_text(json.dumps({"api_key": "a" * 43, "secret_key": "s" * 43}))  # an older file
    with_file = with_dev_secrets(config, from_file=True)
    assert with_file.providers.twilio is None and with_file.providers.vonage is None
    assert with_file.api_key.get_secret_value() == "a" * 43
    without = with_dev_secrets(config, from_file=False)
    stored = json.loads((tmp_path / "dev-secrets.json").read_text())
    assert stored["api_key"] == "a" * 43  # kept; the provider credentials were added to it
    assert without.providers.twilio.auth_token.get_secret_value() == stored["twilio_auth_token"]
    assert without.providers.vonage.signature_secret.get_secret_value() == stored["vonage_signature_secret"]
    assert len(stored["vonage_signature_secret"]) >= 32  # no short-key warnings from PyJWT
    configured = parse_config({"data_dir": str(tmp_path), "providers": {"twilio": {"account_sid": "AC1", "auth_token": "mine"}}}, env={})
    assert with_dev_secrets(configured, from_file=False).providers.twilio.auth_token.get_secret_value() == "mine"
    with pytest.raises(ConfigError, match="no development secrets"):
        with_dev_secrets(parse_config({"data_dir": str(tmp_path / "empty")}, env={}), create=False)
    assert DevSecrets.read(tmp_path / "empty" / "dev-secrets.json") is None


def test_a_twilio_speaking_agent_gets_twilio_audio_and_nothing_else():
    config = parse_config({"agent": {"url": "ws://127.0.0.1:1/bot", "protocol": "twilio"}}, env={})
    assert config.agent.protocol.value == "twilio"
    assert (config.agent.audio.encoding, config.agent.audio.sample_rate) == ("mulaw", 8000)
    with pytest.raises(ConfigError, match=r"agent: audio must be mulaw at 8000 Hz with protocol twilio"):
        parse_config({"agent": {"url": "ws://127.0.0.1:1/bot", "protocol": "twilio",
                                "audio": {"encoding": "pcm16", "sample_rate": 16000}}}, env={})
    with pytest.raises(ConfigError, match=r"agent\.protocol"):
        parse_config({"agent": {"url": "ws://127.0.0.1:1/bot", "protocol": "sip"}}, env={})
