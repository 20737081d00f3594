"""The `tunnel:` config section."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.tunnel import detector_for
from gateway.tunnel.cloudflared import DEFAULT_METRICS


def test_defaults_look_where_cloudflared_listens_by_default():
    config = parse_config({"public_url": "auto"}, env={})
    detector = detector_for(config.tunnel)
    assert detector.addresses == list(DEFAULT_METRICS) and detector.log_file is None
    assert detector.refresh_seconds == 15 and detector.timeout == 2


def test_metrics_as_text_or_list():
    one = parse_config({"tunnel": {"metrics": "cloudflared:20241"}}, env={})
    assert one.tunnel.metrics == ["cloudflared:20241"]
    many = parse_config({"tunnel": {"metrics": "127.0.0.1:20241, [::1]:20242 ,http://tunnel:20241"}}, env={})
    assert many.tunnel.metrics == ["127.0.0.1:20241", "[::1]:20242", "http://tunnel:20241"]
    from_env = parse_config({"tunnel": {"metrics": "${M:-tunnel:20241}", "log_file": "/tmp/cf.log"}}, env={})
    assert from_env.tunnel.metrics == ["tunnel:20241"] and from_env.tunnel.log_file == "/tmp/cf.log"


@pytest.mark.parametrize("tunnel, words", [
    ({"metrics": "cloudflared"}, "tunnel.metrics"),
    ({"metrics": ["127.0.0.1:99999"]}, "port must be 1-65535"),
    ({"metrics": ["https://x:1/path"]}, "not a host:port"),
    ({"refresh_seconds": 0}, "tunnel.refresh_seconds"),
    ({"metric": "x:1"}, "tunnel.metric"),
])
def test_mistakes_name_the_key(tunnel, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        parse_config({"tunnel": tunnel}, env={})
