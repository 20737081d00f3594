"""The provider rate limit charges only what fails verification: a real gateway on loopback
takes a burst of signed callbacks far over the per-IP budget from one address, while that
address's unsigned requests are 429 once their burst is spent."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from support import TWILIO_SID, twilio_signature, vonage_jwt

LIMITS = {"provider_requests_per_second": 1, "provider_burst": 10}


def _signed(url: str, status: str, n: int) -> tuple[dict[str, str], dict[str, str]]:
    params = {"CallSid": "CA" + "7" * 32, "AccountSid": TWILIO_SID, "CallStatus": status, "From": "+1555", "To": "+1666",
              "SequenceNumber": str(n)}
    return params, {"X-Twilio-Signature": twilio_signature(url, params)}


async def _send_signed(client: httpx.AsyncClient, url: str, count: int, status: str = "in-progress") -> list[int]:
    gate = asyncio.Semaphore(16)

    async def one(n: int) -> int:
        params, headers = _signed(url, status, n)
        async with gate:
            return (await client.post(url, data=params, headers=headers)).status_code

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def test_signed_callbacks_from_one_address_are_never_refused_for_rate(gateway_server):
    server = gateway_server(limits=LIMITS)
    url = server.url + "/api/v1/telephony/status-callback/run-rate"
    async with httpx.AsyncClient(timeout=30) as client:
        codes = await _send_signed(client, url, 1200)
        assert codes == [204] * 1200  # 1,200 from one address against a budget of 10 (+1/s)
        text = (await client.get(server.url + "/metrics")).text
    assert 'gateway_refusals_total{limit="provider_rate_per_ip"}' not in text


async def test_unsigned_flood_is_429_after_its_burst_and_signed_requests_still_pass(gateway_server):
    server = gateway_server(limits=LIMITS)
    status_url = server.url + "/api/v1/telephony/status-callback/run-flood"
    answer_url = server.url + "/api/v1/telephony/webhook/wf/u/run-flood"
    async with httpx.AsyncClient(timeout=30) as client:
        unsigned = [(await client.post(status_url, data={"CallSid": "CA1"})).status_code for _ in range(30)]
        assert set(unsigned[:10]) == {403} and 429 in unsigned[10:] and unsigned.count(429) >= 15
        for n in range(20):  # interleaved: signed requests from the flooding address are accepted
            params, headers = _signed(status_url, "ringing", n)
            assert (await client.post(status_url, data=params, headers=headers)).status_code == 204
            forged = await client.post(status_url, data=params, headers={"X-Twilio-Signature": "bm9wZQ=="})
            assert forged.status_code == 429
            assert forged.json()["title"] == "Too Many Requests" and forged.headers["retry-after"] == "1"
        params, headers = _signed(answer_url, "in-progress", 0)  # a Starlette-routed provider request too
        answered = await client.post(answer_url, data=params, headers=headers)
        assert answered.status_code == 200 and "<Stream" in answered.text
        body = b'{"uuid": "u1", "status": "started"}'
        vonage = await client.post(server.url + "/api/v1/telephony/status-callback/vonage", content=body,
                                   headers={"Authorization": f"Bearer {vonage_jwt(body)}", "Content-Type": "application/json"})
        assert vonage.status_code == 204
        assert (await client.post(answer_url, data=params)).status_code == 429  # unsigned, Starlette-routed
        text = (await client.get(server.url + "/metrics")).text
    assert 'gateway_refusals_total{limit="provider_rate_per_ip"}' in text


async def test_other_addresses_keep_their_own_budget(gateway_server):
    server = gateway_server(limits=LIMITS)  # loopback is a trusted proxy by default: X-Forwarded-For names the caller
    url = server.url + "/api/v1/telephony/status-callback/run-ips"
    async with httpx.AsyncClient(timeout=30) as client:
        flood = [(await client.post(url, data={}, headers={"X-Forwarded-For": "203.0.113.5"})).status_code for _ in range(15)]
        assert flood[-1] == 429
        other = await client.post(url, data={}, headers={"X-Forwarded-For": "203.0.113.6"})
        assert other.status_code == 403


async def test_refused_media_upgrades_are_charged_too(gateway_server):
    import websockets
    from websockets.asyncio.client import connect

    server = gateway_server(limits=LIMITS)
    ws_url = server.url.replace("http", "ws") + "/api/v1/telephony/ws/wf/u/run-ws"
    for _ in range(10):  # forged upgrades: refused (403) and each charged
        with pytest.raises(websockets.InvalidStatus):
            await connect(ws_url, additional_headers={"X-Twilio-Signature": "bm9wZQ=="}, proxy=None)
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(server.url + "/api/v1/telephony/status-callback/run-ws", data={})
    assert answer.status_code == 429  # the address's budget is spent
