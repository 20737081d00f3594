"""Stream tokens pinned exactly: a known answer computed here with hmac (the independent
oracle), every refusal's exact reason, and the edges (expiry second, 12-digit limit)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from gateway.media import token as token_module

KEY = b"k" * 32


IDS = {"workflow_id": "wf-1", "user_id": "user-1"}


def expected_token(run_id: str, expires: int) -> str:
    digest = hmac.new(KEY, f"v2\x00wf-1\x00user-1\x00{run_id}\x00{expires}".encode(), hashlib.sha256).digest()
    return f"v2.{expires}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def mint_stream_token(key, run_id, *, now, ttl):
    return token_module.mint_stream_token(key, run_id, now=now, ttl=ttl, **IDS)


def check_stream_token(key, run_id, token, *, now):
    return token_module.check_stream_token(key, run_id, token, now=now, **IDS)


def test_known_answer():
    assert mint_stream_token(KEY, "run-1", now=1000.9, ttl=60) == expected_token("run-1", 1060)
    assert "=" not in mint_stream_token(KEY, "run-1", now=1000, ttl=60)


def test_valid_until_its_expiry_second_inclusive():
    token = expected_token("run-1", 1060)
    assert check_stream_token(KEY, "run-1", token, now=1060) is None
    assert check_stream_token(KEY, "run-1", token, now=1060.5) == "stream token expired"


@pytest.mark.parametrize(("token", "reason"), [
    (None, "missing stream token"),
    ("", "missing stream token"),
    (5, "missing stream token"),
    ("v2.1060", "malformed stream token"),
    ("v3.1060.x", "malformed stream token"),
    ("v1.1060.x", "stream token of an earlier version (v1): the call must be answered again"),
    ("v2.1o60.x", "malformed stream token"),
    ("v2.\u00b2.x", "malformed stream token"),
    ("v2.\u0661\u0660.x", "malformed stream token"),
    ("v2.1234567890123.x", "malformed stream token"),
    ("v2.1060.x", "stream token does not match this call"),
])
def test_refusals_name_their_reason(token, reason):
    assert check_stream_token(KEY, "run-1", token, now=0) == reason


def test_twelve_digit_expiry_is_still_read():
    token = expected_token("run-1", 999_999_999_999)
    assert check_stream_token(KEY, "run-1", token, now=0) is None
    assert check_stream_token(KEY, "run-1", token.replace("v2.", "v2.0", 1), now=0) == "malformed stream token"


def test_non_ascii_mac_part_does_not_pass():  # compare_digest raised TypeError on non-ASCII str
    token = expected_token("run-1", 1060)
    assert check_stream_token(KEY, "run-1", token[:-1] + "\u00e9", now=0) == "stream token does not match this call"


def test_a_lone_surrogate_in_the_mac_part_does_not_raise():
    token = expected_token("run-1", 1060)
    assert check_stream_token(KEY, "run-1", token[:-1] + "\ud800", now=0) == "stream token does not match this call"
