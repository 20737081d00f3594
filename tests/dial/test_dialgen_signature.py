"""Campaigns' inline webhooks verify as Dialgen documents: a receiver doing exactly what Dialgen's
Node example does (`x-dialgen-signature` = hex HMAC-SHA256 of `JSON.stringify(req.body)` with the
webhook secret) accepts every request, and the Standard Webhooks signature verifies too."""

from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook

from dial.campaign_support import Network, api, dial_config, phones, wait_status
from dial.fakes import FakeTwilio
from dial.node_support import DialgenReceiver
from gateway.webhooks.signing import hmac_sha256_hex, signature_headers

CONFIGURED = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# What a contact may carry: integer-like keys (a JavaScript object moves them first), floats
# that JavaScript writes as integers, text that needs escapes, numbers past 2**53.
TRICKY = {"zeta": 1, "2": "two", "1": "one", "score": 1.0, "ratio": 0.1, "tiny": 1.5e-7, "big": 1e21,
          "huge": 2**60, "name": "Zoë \"Z\" <b>\n\t漢字 😀", "nested": {"10": [1.50, -0.0], "a": None}}


@pytest.fixture
def twilio():
    with FakeTwilio() as fake:
        yield fake


def test_signature_headers_carry_both_schemes_over_the_same_bytes():
    body = b'{"success":true}'
    headers = signature_headers("dialgen", [CONFIGURED], message_id="msg_1", timestamp=int(time.time()), body=body)
    assert headers["x-dialgen-signature"] == hmac_sha256_hex(CONFIGURED, body)
    # keyed with the secret's text as the user holds it, whsec_ prefix included
    import hashlib
    import hmac
    assert headers["x-dialgen-signature"] == hmac.new(CONFIGURED.encode(), body, hashlib.sha256).hexdigest()
    assert Webhook(CONFIGURED).verify(body, headers) == {"success": True}
    assert "x-dialgen-signature" not in signature_headers("dialgen", [], message_id="m", timestamp=1, body=body)


def _campaign(base, numbers, webhooks):
    body = {"workflow_id": "wf-d", "user_id": "user-d",
            "contacts": [{"phone": phone, "name": f"Zoë {i}", "context": TRICKY} for i, phone in enumerate(numbers)],
            "options": {"concurrency": 3, "calls_per_second": 50, "webhooks": webhooks}}
    response = api(base, "POST", "/api/v1/campaigns", json=body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.parametrize("configured", [False, True], ids=["per-campaign secret", "dial.webhook_secret"])
def test_dialgen_node_receiver_accepts_every_inline_webhook(gateway_server, twilio, configured):
    dial = {"webhook_secret": CONFIGURED} if configured else {}
    with DialgenReceiver() as receiver:
        if configured:
            receiver.set_secret(CONFIGURED)
        server = gateway_server(**dial_config(twilio, **dial))
        numbers = phones(3, start=300)
        with Network(twilio):
            made = _campaign(server.url, numbers, {"onCallComplete": receiver.url + "/call-complete",
                                                   "onBatchComplete": receiver.url + "/batch-complete"})
            secret = CONFIGURED if configured else made["webhook_secret"]
            if not configured:
                receiver.set_secret(secret)  # the receiver answered 503 until now: those are retried
            wait_status(server.url, made["id"], "completed")
            seen = receiver.wait_for(4)
    checked = [request for request in seen if request["valid"]]
    assert len(checked) == 4, [request["raw"][:200] for request in seen if not request["valid"]]
    assert sorted(request["path"] for request in checked) == ["/batch-complete"] + ["/call-complete"] * 3
    for request in checked:
        # the same bytes carry a valid Standard Webhooks signature with the same secret
        assert Webhook(secret).verify(request["raw"].encode(), request["headers"]) == request["body"]
        call = request["body"].get("callData")
        if call is not None:  # the contact's data arrived as JavaScript reads it
            assert call["contactContext"]["score"] == 1 and call["contactContext"]["1"] == "one"
            assert call["contactContext"]["name"] == TRICKY["name"]
            assert list(call["contactContext"])[:2] == ["1", "2"]
            assert '"score":1,' in request["raw"]
