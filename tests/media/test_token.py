"""Stream tokens: bound to the media socket's path ids, expiring, tamper-evident."""

from __future__ import annotations

import pytest

from gateway.media.token import check_stream_token, mint_stream_token

KEY = b"k" * 32
IDS = {"workflow_id": "wf-1", "user_id": "user-1"}


def test_valid_token_for_its_run_only():
    token = mint_stream_token(KEY, "run-1", now=1000, ttl=60, **IDS)
    assert check_stream_token(KEY, "run-1", token, now=1030, **IDS) is None
    assert check_stream_token(KEY, "run-2", token, now=1030, **IDS) == "stream token does not match this call"
    assert check_stream_token(b"other", "run-1", token, now=1030, **IDS) == "stream token does not match this call"


@pytest.mark.parametrize("other", [{"workflow_id": "wf-2", "user_id": "user-1"}, {"workflow_id": "wf-1", "user_id": "user-2"},
                                   {"workflow_id": "wf-1user-1", "user_id": ""}])
def test_token_binds_the_workflow_and_user_of_the_path(other):
    token = mint_stream_token(KEY, "run-1", now=1000, ttl=60, **IDS)
    assert check_stream_token(KEY, "run-1", token, now=1030, **other) == "stream token does not match this call"


def test_a_v1_token_is_refused_by_name():
    assert "earlier version" in check_stream_token(KEY, "run-1", "v1.2000.abc", now=1000, **IDS)


def test_expired_token():
    token = mint_stream_token(KEY, "run-1", now=1000, ttl=60, **IDS)
    assert check_stream_token(KEY, "run-1", token, now=1061, **IDS) == "stream token expired"


@pytest.mark.parametrize("token", [None, "", "v1", "v2.1.abc", "v2.notanumber.abc", "v2.1.2.3", 12, "v2.99999999999999.x"])
def test_malformed_tokens(token):
    assert check_stream_token(KEY, "run-1", token, now=0, **IDS) is not None


def test_extending_expiry_breaks_the_mac():
    token = mint_stream_token(KEY, "run-1", now=1000, ttl=60, **IDS)
    version, expires, mac = token.split(".")
    forged = f"{version}.{int(expires) + 3600}.{mac}"
    assert check_stream_token(KEY, "run-1", forged, now=1030, **IDS) == "stream token does not match this call"
