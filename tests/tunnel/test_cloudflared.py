"""Reading cloudflared's answers: pure functions over the exact texts cloudflared produces."""

from __future__ import annotations

import json

import pytest

from gateway.tunnel import cloudflared
from gateway.tunnel.cloudflared import NotQuickTunnel
from gateway.tunnel.status import Sighting, TunnelStatus, describe

HOST = "oklahoma-solo-younger-truck.trycloudflare.com"


def test_default_metrics_addresses_are_cloudflareds_first_choices():
    assert cloudflared.DEFAULT_METRICS == ("127.0.0.1:20241", "127.0.0.1:20242", "127.0.0.1:20243",
                                           "127.0.0.1:20244", "127.0.0.1:20245")
    assert cloudflared.metrics_url("cloudflared:20241", "/quicktunnel") == "http://cloudflared:20241/quicktunnel"
    assert cloudflared.metrics_url("http://[::1]:20241/", "/ready") == "http://[::1]:20241/ready"


def test_quicktunnel_answer():
    assert cloudflared.hostname_from_quicktunnel(b'{"hostname":"%s"}' % HOST.encode()) == HOST
    # Defensive: a scheme or upper case (not what cloudflared sends) still gives the bare host.
    assert cloudflared.hostname_from_quicktunnel(json.dumps({"hostname": f"https://{HOST.upper()}/"})) == HOST


@pytest.mark.parametrize("body, words", [
    (b'{"hostname":""}', "runs no quick tunnel"),
    (b"404 page not found\n", "did not answer JSON"),
    (b'["x"]', 'without a "hostname"'),
    (b'{"hostname":"evil.example.com/steal?x="}', "not a hostname"),
    (b'{"hostname":"x.trycloudflare.com:8443"}', "not a hostname"),
    (b'{"hostname":"user@x.trycloudflare.com"}', "not a hostname"),
    (b'{"hostname":"-bad-.trycloudflare.com"}', "not a hostname"),
])
def test_quicktunnel_answers_without_a_usable_hostname(body, words):
    with pytest.raises(NotQuickTunnel, match=words):
        cloudflared.hostname_from_quicktunnel(body)


def test_user_hostname_counter_in_prometheus_text(cloudflared_says):
    assert cloudflared.hostname_from_metrics(cloudflared_says.metrics(HOST)) == HOST
    # Older releases put the registration URL in the label without a scheme; other labels may come first.
    old = 'cloudflared_tunnel_user_hostnames_counts{instance="a",userHostname="%s"} 3\n' % HOST
    assert cloudflared.hostname_from_metrics(old) == HOST
    escaped = 'cloudflared_tunnel_user_hostnames_counts{note="say \\"hi\\"",userHostname="https://%s"} 1e+00\n' % HOST
    assert cloudflared.hostname_from_metrics(escaped) == HOST


def test_metrics_without_the_counter_or_with_a_zero_count(cloudflared_says):
    with pytest.raises(NotQuickTunnel, match="cloudflared_tunnel_user_hostnames_counts"):
        cloudflared.hostname_from_metrics(cloudflared_says.metrics(None))
    with pytest.raises(NotQuickTunnel):
        cloudflared.hostname_from_metrics('cloudflared_tunnel_user_hostnames_counts{userHostname="https://%s"} 0\n' % HOST)
    with pytest.raises(NotQuickTunnel):  # a similar name is not the metric
        cloudflared.hostname_from_metrics('cloudflared_tunnel_user_hostnames_counts_total{userHostname="https://%s"} 1\n' % HOST)


def test_log_box_line_as_documented(cloudflared_says):
    sample = ("2023-01-16T08:32:58Z INF |  Your quick Tunnel has been created! Visit it at (it may take some time "
              "to be reachable):  |\n2023-01-16T08:32:58Z INF |  https://oklahoma-solo-younger-truck.trycloudflare.com  |\n")
    assert cloudflared.hostname_from_log(sample) == HOST
    assert cloudflared.hostname_from_log(cloudflared_says.startup_log("a-b-c.trycloudflare.com")) == "a-b-c.trycloudflare.com"


def test_log_newest_hostname_wins_and_the_api_host_is_not_a_tunnel(cloudflared_says):
    log = cloudflared_says.startup_log
    restarted = log("first-one.trycloudflare.com") + log("second-one.trycloudflare.com")
    assert cloudflared.hostname_from_log(restarted) == "second-one.trycloudflare.com"
    failed = ('2024-12-20T09:00:00Z ERR Error unmarshaling QuickTunnel response: error="failed to request quick '
              'Tunnel: Post \\"https://api.trycloudflare.com/tunnel\\": dial tcp: lookup api.trycloudflare.com"\n')
    with pytest.raises(NotQuickTunnel):
        cloudflared.hostname_from_log(failed)
    with pytest.raises(NotQuickTunnel):
        cloudflared.hostname_from_log("INF Requesting new quick Tunnel on trycloudflare.com...\n")
    # --output json: the box line is the message; the regex fallback also finds a bare URL.
    as_json = json.dumps({"level": "info", "time": "2024-12-20T09:00:00Z", "message": f"|  https://{HOST}  |"})
    assert cloudflared.hostname_from_log(failed + as_json + "\n") == HOST
    assert cloudflared.hostname_from_log(f"visit https://{HOST} now") == HOST


def test_ready_answer():
    assert cloudflared.readiness(b'{"status":200,"readyConnections":4,"connectorId":"3782d772"}') == (4, "3782d772")
    assert cloudflared.readiness(b'{"status":503,"readyConnections":0}') == (0, None)
    assert cloudflared.readiness(b"OK\n") == (None, None)


def test_status_keeps_a_hostname_while_lookups_fail_and_replaces_it_on_a_new_one():
    first = TunnelStatus().after_lookup(Sighting("a.trycloudflare.com", "quicktunnel", "127.0.0.1:1"), None, 10.0)
    assert first.origin == "https://a.trycloudflare.com" and first.found_at == 10.0 and not first.stale
    failed = first.after_lookup(None, "connection refused at 127.0.0.1:1", 20.0)
    assert failed.origin == "https://a.trycloudflare.com" and failed.stale and failed.checked_at == 20.0
    again = failed.after_lookup(Sighting("a.trycloudflare.com", "quicktunnel", "127.0.0.1:1"), None, 30.0)
    assert again.found_at == 10.0 and not again.stale
    moved = again.after_lookup(Sighting("b.trycloudflare.com", "metrics", "127.0.0.1:1"), None, 40.0)
    assert moved.origin == "https://b.trycloudflare.com" and moved.found_at == 40.0 and moved.lookups == 4
    assert moved.to_dict()["found_at"] == "1970-01-01T00:00:40Z"


def test_describe_says_which_origin_and_why():
    fixed = describe("https://gw.example.com", None, "https://gw.example.com", [])
    assert fixed["mode"] == "fixed" and fixed["websocket_origin"] == "wss://gw.example.com"
    unset = describe(None, None, "http://127.0.0.1:8000", [])
    assert unset["mode"] == "request" and "public_url is not set" in unset["detail"]
    missing = describe("auto", TunnelStatus().after_lookup(None, "connection refused at 127.0.0.1:20241", 1.0),
                       "http://127.0.0.1:8000", ["http://127.0.0.1:20241"])
    assert missing["mode"] == "request" and missing["tunnel"]["found"] is False
    assert "no cloudflared tunnel found (connection refused at 127.0.0.1:20241)" in missing["detail"]
    assert "request" in missing["detail"] and "make tunnel" in missing["detail"]
    found = TunnelStatus().after_lookup(Sighting(HOST, "quicktunnel", "127.0.0.1:20241", 1, "c0"), None, 1.0)
    shown = describe("auto", found, f"https://{HOST}", ["http://127.0.0.1:20241"])
    assert shown["mode"] == "tunnel" and shown["origin"] == f"https://{HOST}" and shown["websocket_origin"] == f"wss://{HOST}"
    assert shown["tunnel"] | {"found_at": None, "checked_at": None} == {
        "found": True, "hostname": HOST, "source": "quicktunnel", "address": "127.0.0.1:20241",
        "ready_connections": 1, "connector_id": "c0", "stale": False, "found_at": None, "checked_at": None, "error": None,
        "searched": ["http://127.0.0.1:20241"]}
    stale = found.after_lookup(None, "no answer in time at 127.0.0.1:20241", 2.0)
    shown = describe("auto", stale, f"https://{HOST}", [])
    assert shown["mode"] == "tunnel" and shown["tunnel"]["stale"] is True and "may be out of date" in shown["detail"]
