"""Stream tokens: bound to the run, expiring, tamper-evident."""

from __future__ import annotations

import pytest

from gateway.media.token import check_stream_token, mint_stream_token

KEY = b"k" * 32


def test_valid_token_for_its_run_only():
    token = mint_stream_token(KEY, "run-1", now=1000, ttl=60)
    assert check_stream_token(KEY, "run-1", token, now=1030) is None
    assert check_stream_token(KEY, "run-2", token, now=1030) == "stream token does not match this call"
    assert check_stream_token(b"other", "run-1", token, now=1030) == "stream token does not match this call"


def test_expired_token():
    token = mint_stream_token(KEY, "run-1", now=1000, ttl=60)
    assert check_stream_token(KEY, "run-1", token, now=1061) == "stream token expired"


@pytest.mark.parametrize("token", [None, "", "v1", "v2.1.abc", "v1.notanumber.abc", "v1.1.2.3", 12, "v1.99999999999999.x"])
def test_malformed_tokens(token):
    assert check_stream_token(KEY, "run-1", token, now=0) is not None


def test_extending_expiry_breaks_the_mac():
    token = mint_stream_token(KEY, "run-1", now=1000, ttl=60)
    version, expires, mac = token.split(".")
    forged = f"{version}.{int(expires) + 3600}.{mac}"
    assert check_stream_token(KEY, "run-1", forged, now=1030) == "stream token does not match this call"
