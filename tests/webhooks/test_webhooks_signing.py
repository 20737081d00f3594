"""Signing: the Standard Webhooks known answer, verification by the reference library, rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.webhooks.sender import RequestBuildError, build_request
from gateway.webhooks.signing import (
    decode_signing_secret,
    signature_headers,
    standard_signature,
)
from gateway.webhooks.subscription import Subscription

KAT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KAT_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
KAT_TIMESTAMP = 1674087231
KAT_BODY = b'{"test": 2432232314}'
KAT_SIGNATURE = "v1,AQG81rX2n4rTN1fkXoqILSHO9gAOcwya9dP41rhrQDI="
ENVELOPE = {"type": "call.ended", "timestamp": "2026-01-01T00:00:00Z", "data": {"workflow_run_id": "r1"}}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def subscription(**fields) -> Subscription:
    return Subscription.model_validate({"name": "crm", "events": ["call.*"], "url": "https://crm.example.com/hook", **fields})


def test_known_answer_vector():
    assert standard_signature(KAT_SECRET, KAT_ID, KAT_TIMESTAMP, KAT_BODY) == KAT_SIGNATURE
    headers = signature_headers("standard", [KAT_SECRET], message_id=KAT_ID, timestamp=KAT_TIMESTAMP, body=KAT_BODY)
    assert headers == {"webhook-id": KAT_ID, "webhook-timestamp": str(KAT_TIMESTAMP), "webhook-signature": KAT_SIGNATURE}


def test_built_request_verifies_with_standardwebhooks():
    secret = new_secret()
    prepared = build_request(
        subscription(signing={"scheme": "standard", "secrets": [secret]}),
        ENVELOPE, {}, {}, message_id="msg_abc123", now=time.time(),
    )
    assert Webhook(secret).verify(prepared.body, prepared.headers) == ENVELOPE
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(prepared.body, prepared.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(prepared.body + b" ", prepared.headers)


def test_rotation_signs_with_every_live_secret():
    old, new = new_secret(), new_secret()
    prepared = build_request(
        subscription(signing={"secrets": [old, new]}), ENVELOPE, {}, {}, message_id="msg_rot", now=time.time()
    )
    signatures = prepared.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert Webhook(old).verify(prepared.body, prepared.headers) == ENVELOPE
    assert Webhook(new).verify(prepared.body, prepared.headers) == ENVELOPE


def test_secret_may_come_from_the_secrets_mapping():
    secret = new_secret()
    prepared = build_request(
        subscription(signing={"secrets": ["{{secret.WHSEC}}"]}), ENVELOPE, {}, {"WHSEC": secret},
        message_id="msg_ref", now=time.time(),
    )
    assert Webhook(secret).verify(prepared.body, prepared.headers) == ENVELOPE
    assert secret not in str(prepared.redacted())


def test_each_attempt_has_a_fresh_timestamp_and_the_same_id():
    secret = new_secret()
    sub = subscription(signing={"secrets": [secret]})
    now = time.time()
    first = build_request(sub, ENVELOPE, {}, {}, message_id="msg_same", now=now - 120)
    second = build_request(sub, ENVELOPE, {}, {}, message_id="msg_same", now=now)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_same"
    assert int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 120
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    assert first.body == second.body
    for prepared in (first, second):
        assert Webhook(secret).verify(prepared.body, prepared.headers) == ENVELOPE


def test_stale_attempt_is_rejected_by_receivers():
    secret = new_secret()
    stale = build_request(subscription(signing={"secrets": [secret]}), ENVELOPE, {}, {}, message_id="msg_old", now=time.time() - 3600)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(stale.body, stale.headers)


def test_hmac_sha256_hex_scheme():
    prepared = build_request(
        subscription(signing={"scheme": "hmac_sha256_hex", "secret": "{{secret.HEX}}", "header": "X-Sig"}),
        ENVELOPE, {}, {"HEX": "shared-hex-key"}, message_id="msg_hex", now=1_700_000_000,
    )
    expected = hmac.new(b"shared-hex-key", prepared.body, hashlib.sha256).hexdigest()
    assert prepared.headers["X-Sig"] == expected
    assert "webhook-signature" not in prepared.headers
    default_header = build_request(
        subscription(signing={"scheme": "hmac_sha256_hex", "secret": "literal-key"}),
        ENVELOPE, {}, {}, message_id="msg_hex", now=1_700_000_000,
    )
    assert default_header.headers["X-Webhook-Signature"] == hmac.new(b"literal-key", default_header.body, hashlib.sha256).hexdigest()
    assert "literal-key" not in str(default_header.redacted())


def test_none_scheme_sends_id_and_timestamp_only():
    prepared = build_request(subscription(signing={"scheme": "none"}), ENVELOPE, {}, {}, message_id="msg_n", now=1_700_000_000)
    assert prepared.headers["webhook-id"] == "msg_n"
    assert prepared.headers["webhook-timestamp"] == "1700000000"
    assert "webhook-signature" not in prepared.headers


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with"),
        ("whsec_not base64!", "base64"),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "24 to 64 bytes, not 16"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "not 65"),
    ],
)
def test_bad_signing_secrets(secret, message):
    with pytest.raises(ValueError, match=message):
        decode_signing_secret(secret)


def test_message_id_with_a_dot_is_refused():
    with pytest.raises(RequestBuildError, match="may not contain"):
        build_request(subscription(signing={"secrets": [new_secret()]}), ENVELOPE, {}, {}, message_id="msg.1", now=1)
