"""What cloudflared says about its quick tunnel, read without any I/O.

Three places name the tunnel's public hostname (cloudflare/cloudflared, see PROTOCOLS.md §7):
- `GET /quicktunnel` on the metrics server: `{"hostname":"<words>.trycloudflare.com"}`
  (no scheme; `""` when the process runs no quick tunnel).
- `GET /metrics` (Prometheus text): the counter `cloudflared_tunnel_user_hostnames_counts`
  with label `userHostname="https://<words>.trycloudflare.com"` (connection/metrics.go;
  the observer prefixes `https://`, older releases may not).
- stderr: the box line `INF |  https://<words>.trycloudflare.com  |` under
  `Your quick Tunnel has been created! Visit it at ...`.
"""

from __future__ import annotations

import json
import re

from gateway.errors import GatewayError

DEFAULT_METRICS = tuple(f"127.0.0.1:{port}" for port in range(20241, 20246))
USER_HOSTNAMES_METRIC = "cloudflared_tunnel_user_hostnames_counts"
QUICK_TUNNEL_DOMAIN = "trycloudflare.com"
_API_HOST = "api." + QUICK_TUNNEL_DOMAIN  # where cloudflared asks for a tunnel: not a tunnel itself

_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_SAMPLE = re.compile(r"^" + USER_HOSTNAMES_METRIC + r"\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_BOX_LINE = re.compile(r"\|\s+(https://[a-z0-9-]+\.trycloudflare\.com)/?\s+\|", re.IGNORECASE)
_ANY_URL = re.compile(r"https://[a-z0-9-]+\.trycloudflare\.com", re.IGNORECASE)
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class NotQuickTunnel(GatewayError, ValueError):
    """cloudflared answered, but its answer names no hostname (a named tunnel, or not ready)."""


def clean_hostname(value: str) -> str | None:
    """`value` as a bare lower-case DNS hostname (scheme and one trailing `/` dropped), or None.

    Anything else (a port, a path, user info, odd characters) is refused, so nothing a
    metrics server says can reshape the URLs handed to providers.
    """
    text = value.strip().lower()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
            break
    text = text.removesuffix("/")
    if not 3 < len(text) <= 253 or "." not in text:
        return None
    if not all(_DNS_LABEL.match(label) for label in text.split(".")):
        return None
    return text


def hostname_from_quicktunnel(body: bytes | str) -> str:
    """The hostname in a `/quicktunnel` answer; `NotQuickTunnel` if it is empty or malformed."""
    try:
        data = json.loads(body)
    except ValueError:
        raise NotQuickTunnel("/quicktunnel did not answer JSON") from None
    raw = data.get("hostname") if isinstance(data, dict) else None
    if not isinstance(raw, str):
        raise NotQuickTunnel('/quicktunnel answered without a "hostname" field')
    if not raw.strip():
        raise NotQuickTunnel("/quicktunnel names no hostname: cloudflared runs no quick tunnel (a named tunnel?)")
    hostname = clean_hostname(raw)
    if hostname is None:
        raise NotQuickTunnel(f"/quicktunnel named {raw[:80]!r}, which is not a hostname")
    return hostname


def _unescape(label_value: str) -> str:
    return label_value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def hostname_from_metrics(text: str) -> str:
    """The `userHostname` of the first non-zero `cloudflared_tunnel_user_hostnames_counts` sample."""
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        try:
            if float(match.group("value")) <= 0:
                continue
        except ValueError:
            continue
        labels = {name: _unescape(value) for name, value in _LABEL.findall(match.group("labels"))}
        hostname = clean_hostname(labels.get("userHostname", ""))
        if hostname is not None:
            return hostname
    raise NotQuickTunnel(f"/metrics has no {USER_HOSTNAMES_METRIC}{{userHostname=...}} sample")


def hostname_from_log(text: str) -> str:
    """The newest quick-tunnel hostname in cloudflared's log: the box line, else any such URL.

    The newest wins: a restarted cloudflared appending to the same file announces its new
    hostname below the old one. `https://api.trycloudflare.com` (in request errors) is skipped.
    """
    for pattern in (_BOX_LINE, _ANY_URL):
        found = [m.group(1) if m.groups() else m.group(0) for m in pattern.finditer(text)]
        hostnames = [h for h in (clean_hostname(url) for url in found) if h and h != _API_HOST]
        if hostnames:
            return hostnames[-1]
    raise NotQuickTunnel("the log names no https://<name>.trycloudflare.com URL (yet)")


def metrics_url(address: str, path: str) -> str:
    """`http://address/path` for a metrics `host:port` (an `http://` prefix is allowed)."""
    base = address if address.startswith(("http://", "https://")) else f"http://{address}"
    return base.rstrip("/") + path


def readiness(body: bytes | str) -> tuple[int | None, str | None]:
    """(`readyConnections`, `connectorId`) from a `/ready` answer; None where absent.

    The connector id is new each time cloudflared starts, so a change means a restart.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    count = data.get("readyConnections")
    connector = data.get("connectorId")
    return (
        count if isinstance(count, int) and not isinstance(count, bool) else None,
        connector if isinstance(connector, str) and connector else None,
    )
