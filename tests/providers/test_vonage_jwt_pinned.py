"""The Vonage JWT check pinned exactly: verdicts are `False`, not merely falsy; the edges of
the size limits; the replay guard's settings and eviction. Tokens are made with PyJWT."""

from __future__ import annotations

import hashlib

import jwt
import pytest

from gateway.providers.vonage import MAX_JTI_CHARS, MAX_TOKEN_CHARS, ReplayGuard, verify_vonage_jwt

SECRET = "pinned-vonage-signature-secret-0123456789"
NOW = 1_700_000_000


def token(**claims) -> str:
    payload = {"iat": NOW, "jti": "jti-1", **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET, algorithm="HS256")


def verify(authorization, body=b"", **kw):
    return verify_vonage_jwt(authorization, SECRET, body, now=NOW, replay=kw.pop("replay", ReplayGuard()), **kw)


def test_a_good_token_is_ok_with_its_claims_and_no_reason():
    verdict = verify(f"Bearer {token()}")
    assert verdict.ok is True and verdict.reason == "" and verdict.claims == {"iat": NOW, "jti": "jti-1"}


@pytest.mark.parametrize(("authorization", "reason"), [
    (None, "missing Authorization bearer token"),
    (b"Bearer x", "missing Authorization bearer token"),
    ("", "missing Authorization bearer token"),
    ("Basic abc", "missing Authorization bearer token"),
    ("Bearer", "missing Authorization bearer token"),
    ("Bearer a b", "missing Authorization bearer token"),
    ("Bearer not-a-jwt", "malformed token"),
    ("Bearer " + "a" * (MAX_TOKEN_CHARS + 1), "malformed token"),
])
def test_refusals_are_false_and_name_their_reason(authorization, reason):
    verdict = verify(authorization)
    assert verdict.ok is False and verdict.reason == reason


def test_bearer_scheme_is_case_insensitive_and_space_tolerant():
    assert verify(f"  bearer   {token()}  ").ok is True


def test_a_token_of_exactly_the_size_limit_is_read():
    padded = token(pad="x" * 8000)
    pad = MAX_TOKEN_CHARS - len(padded)
    exact = token(pad="x" * (8000 + pad * 3 // 4))
    while len(exact) < MAX_TOKEN_CHARS:  # base64 grows in steps: creep up to the limit
        pad += 1
        exact = token(pad="x" * (8000 + pad * 3 // 4))
    if len(exact) == MAX_TOKEN_CHARS:
        assert verify(f"Bearer {exact}").ok is True
    assert verify("Bearer " + "a" * MAX_TOKEN_CHARS).reason == "malformed token"


def test_jti_length_limit_is_inclusive():
    assert verify(f"Bearer {token(jti='j' * MAX_JTI_CHARS)}").ok is True
    verdict = verify(f"Bearer {token(jti='j' * (MAX_JTI_CHARS + 1))}")
    assert verdict.ok is False and verdict.reason == "token has no valid jti"


@pytest.mark.parametrize(("claims", "reason"), [
    ({"iat": None}, "token has no valid iat"),
    ({"iat": True}, "token has no valid iat"),
    ({"iat": "1700000000"}, "token has no valid iat"),
    ({"iat": NOW - 301}, "token issued too long ago"),
    ({"iat": NOW + 301}, "token issued in the future"),
    ({"jti": None}, "token has no valid jti"),
    ({"jti": ""}, "token has no valid jti"),
    ({"jti": 5}, "token has no valid jti"),
])
def test_claim_refusals(claims, reason):
    verdict = verify(f"Bearer {token(**claims)}")
    assert verdict.ok is False and verdict.reason == reason


def test_iat_window_edges_are_inclusive():
    assert verify(f"Bearer {token(iat=NOW - 300)}").ok is True
    assert verify(f"Bearer {token(iat=NOW + 300, jti='j2')}").ok is True


def test_payload_hash_is_checked_against_the_body():
    body = b'{"uuid": "u"}'
    good = hashlib.sha256(body).hexdigest()
    assert verify(f"Bearer {token(payload_hash=good.upper() + ' ')}", body).ok is True
    assert verify(f"Bearer {token(payload_hash=good)}", body + b" ").reason == "body does not match payload_hash"
    assert verify(f"Bearer {token()}", body).reason == "missing payload_hash"
    assert verify(f"Bearer {token(payload_hash='')}", body).reason == "missing payload_hash"


def test_api_key_and_application_id_must_match_when_configured():
    good = f"Bearer {token(api_key='k', application_id='a')}"
    assert verify(good, api_key="k", application_id="a").ok is True
    assert verify(good, api_key="other").reason == "api_key does not match"
    assert verify(good, application_id="other").reason == "application_id does not match"


def test_replay_is_refused_and_only_good_tokens_are_remembered():
    guard = ReplayGuard()
    assert verify(f"Bearer {token(iat=NOW - 999)}", replay=guard).ok is False
    assert len(guard) == 0
    assert verify(f"Bearer {token()}", replay=guard).ok is True
    verdict = verify(f"Bearer {token()}", replay=guard)
    assert verdict.ok is False and verdict.reason == "replayed token"


def test_replay_guard_settings():
    with pytest.raises(ValueError, match=r"^window_seconds must be >= 0 and max_entries >= 1$"):
        ReplayGuard(window_seconds=-1)
    with pytest.raises(ValueError, match=r"^window_seconds must be >= 0 and max_entries >= 1$"):
        ReplayGuard(max_entries=0)
    guard = ReplayGuard(window_seconds=0, max_entries=1)
    assert guard.window_seconds == 0.0 and guard.max_entries == 1
    assert ReplayGuard().window_seconds == 300.0 and ReplayGuard().max_entries == 100_000


def test_replay_guard_forgets_the_oldest_when_full_and_expired_entries_in_time():
    guard = ReplayGuard(window_seconds=10, max_entries=2)
    assert guard.first_use("a", 0) and guard.first_use("b", 1) and guard.first_use("c", 2)
    assert len(guard) == 2
    assert guard.first_use("a", 3) is True  # "a" was evicted as the oldest
    assert guard.first_use("c", 3) is False
    assert guard.first_use("c", 12) is False  # remembered until 12 inclusive
    assert guard.first_use("c", 12.5) is True
    assert len(guard) == 2  # the expired "c" was purged, "a" (until 13) kept


def test_without_a_replay_guard_the_caller_claims_the_jti():
    good = f"Bearer {token()}"
    for _ in range(2):
        verdict = verify_vonage_jwt(good, SECRET, b"", now=NOW, replay=None)
        assert verdict.ok is True and verdict.claims["jti"] == "jti-1"
