"""Finding the tunnel against a real loopback server that answers exactly as cloudflared does."""

from __future__ import annotations

import asyncio
import logging

import pytest

from support import eventually, free_port
from gateway.tunnel import TunnelDetector

HOST = "silly-words-here-ok.trycloudflare.com"


async def test_quicktunnel_endpoint_gives_the_hostname(fake_cloudflared):
    fake = fake_cloudflared(HOST)
    detector = TunnelDetector([fake.address])
    status = await detector.refresh()
    assert detector.origin() == f"https://{HOST}"
    assert status.sighting.source == "quicktunnel" and status.sighting.address == fake.address
    assert status.sighting.ready_connections == 1 and status.sighting.connector_id == fake.connector_id
    assert status.error is None and not status.stale
    assert fake.hits == ["/quicktunnel", "/ready"]  # /metrics is not needed when /quicktunnel answers


async def test_metrics_user_hostname_when_cloudflared_has_no_quicktunnel_endpoint(fake_cloudflared):
    fake = fake_cloudflared(HOST, quicktunnel=False)
    status = await TunnelDetector([fake.address]).refresh()
    assert status.hostname == HOST and status.sighting.source == "metrics"
    assert fake.hits[:2] == ["/quicktunnel", "/metrics"]


async def test_empty_hostname_is_a_named_tunnel_not_a_quick_one(fake_cloudflared):
    fake = fake_cloudflared("", user_hostname=False)
    detector = TunnelDetector([fake.address])
    status = await detector.refresh()
    assert detector.origin() is None and status.sighting is None
    assert "runs no quick tunnel" in status.error and "userHostname" in status.error
    assert fake.hits[:2] == ["/quicktunnel", "/metrics"]


async def test_empty_quicktunnel_answer_with_a_user_hostname_counter(fake_cloudflared):
    fake = fake_cloudflared("", user_hostname="classic.example.com")
    status = await TunnelDetector([fake.address]).refresh()
    assert status.hostname == "classic.example.com" and status.sighting.source == "metrics"


async def test_not_running_says_so(caplog):
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    detector = TunnelDetector(dead)
    with caplog.at_level(logging.WARNING, logger="gateway.tunnel"):
        status = await detector.refresh()
    assert detector.origin() is None and status.sighting is None
    assert status.error == f"connection refused at {dead[0]}, {dead[1]}"
    assert "no cloudflared tunnel was found" in caplog.text
    assert detector.searched() == [f"http://{a}" for a in dead]


async def test_scans_every_address_and_tries_the_last_good_one_first(fake_cloudflared):
    fake = fake_cloudflared(HOST)
    dead = f"127.0.0.1:{free_port()}"
    detector = TunnelDetector([dead, fake.address])
    assert (await detector.refresh()).hostname == HOST
    fake.hits.clear()
    await detector.refresh()
    assert fake.hits[0] == "/quicktunnel"
    assert detector.status.lookups == 2


async def test_restart_with_a_new_hostname(fake_cloudflared, caplog):
    fake = fake_cloudflared("first-name.trycloudflare.com")
    detector = TunnelDetector([fake.address])
    first = await detector.refresh()
    assert first.hostname == "first-name.trycloudflare.com"
    old_connector = first.sighting.connector_id
    fake.stop()
    down = await detector.refresh()
    # The cached hostname stays (it may be a blip) but is marked stale, with the reason.
    assert down.hostname == "first-name.trycloudflare.com" and down.stale and "connection refused" in down.error
    fake.restart("second-name.trycloudflare.com")
    with caplog.at_level(logging.WARNING, logger="gateway.tunnel"):
        up = await detector.refresh()
    assert up.hostname == "second-name.trycloudflare.com" and not up.stale
    assert up.sighting.connector_id != old_connector and up.found_at > first.found_at
    assert "tunnel hostname changed: https://first-name.trycloudflare.com -> https://second-name.trycloudflare.com" in caplog.text


async def test_background_refresh_picks_up_a_restart_by_itself(fake_cloudflared):
    fake = fake_cloudflared("before.trycloudflare.com")
    detector = TunnelDetector([fake.address], refresh_seconds=0.2, retry_seconds=0.1, timeout=1.0)
    await detector.start()
    try:
        assert detector.origin() == "https://before.trycloudflare.com"  # start() waits for the first lookup
        fake.restart("after.trycloudflare.com")
        await eventually(lambda: detector.origin() == "https://after.trycloudflare.com")
    finally:
        await detector.stop()


async def test_start_without_a_tunnel_then_one_appears(fake_cloudflared):
    port = free_port()
    detector = TunnelDetector([f"127.0.0.1:{port}"], refresh_seconds=0.5, retry_seconds=0.1, timeout=1.0)
    await detector.start()
    try:
        assert detector.origin() is None and "connection refused" in detector.status.error
        fake_cloudflared(HOST, port=port)
        await eventually(lambda: detector.origin() == f"https://{HOST}")
    finally:
        await detector.stop()


async def test_nudge_looks_again_at_once(fake_cloudflared):
    fake = fake_cloudflared("old-one.trycloudflare.com")
    detector = TunnelDetector([fake.address], refresh_seconds=300, retry_seconds=300, timeout=1.0)
    await detector.start()
    try:
        fake.restart("new-one.trycloudflare.com")
        await asyncio.sleep(0.3)
        assert detector.origin() == "https://old-one.trycloudflare.com"  # nothing looks for 300 s...
        detector.nudge()  # ...unless nudged
        await eventually(lambda: detector.origin() == "https://new-one.trycloudflare.com", timeout=5)
    finally:
        await detector.stop()


async def test_concurrent_refreshes_share_one_lookup(fake_cloudflared):
    fake = fake_cloudflared(HOST)
    detector = TunnelDetector([fake.address])
    results = await asyncio.gather(*(detector.refresh() for _ in range(10)))
    assert {r.hostname for r in results} == {HOST}
    assert detector.status.lookups == 1 and fake.hits.count("/quicktunnel") == 1


async def test_log_file_is_the_last_place_to_look(tmp_path, fake_cloudflared, cloudflared_says):
    log_file = tmp_path / "cloudflared.log"
    dead = f"127.0.0.1:{free_port()}"
    detector = TunnelDetector([dead], log_file=str(log_file))
    missing = await detector.refresh()
    assert missing.sighting is None and str(log_file) in missing.error and "connection refused" in missing.error
    log_file.write_text("2024-12-20T09:00:00Z INF Requesting new quick Tunnel on trycloudflare.com...\n")
    assert (await detector.refresh()).sighting is None
    log_file.write_text(cloudflared_says.startup_log("from-the-log.trycloudflare.com"))
    status = await detector.refresh()
    assert status.hostname == "from-the-log.trycloudflare.com" and status.sighting.source == "log"
    assert status.sighting.address == str(log_file)
    # A metrics server, once it answers, comes before the log.
    fake = fake_cloudflared(HOST)
    assert (await TunnelDetector([fake.address], log_file=str(log_file)).refresh()).hostname == HOST


async def test_a_hostile_answer_is_not_used(fake_cloudflared):
    fake = fake_cloudflared("evil.example.com/x?y=")
    status = await TunnelDetector([fake.address]).refresh()
    assert status.sighting is None and "not a hostname" in status.error


@pytest.mark.parametrize("ready", [False])
async def test_not_ready_yet_is_still_found_and_says_so(fake_cloudflared, ready):
    fake = fake_cloudflared(HOST, ready=ready)
    status = await TunnelDetector([fake.address]).refresh()
    assert status.hostname == HOST and status.sighting.ready_connections == 0
