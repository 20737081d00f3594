"""Cloudflare tunnels: find a quick tunnel's public hostname (`public_url: auto`), start one.

`cloudflared` parses what cloudflared says (pure), `status` holds and describes the cached
answer (pure), `detector` asks cloudflared and keeps the answer fresh (I/O), `launcher`
builds and runs the `cloudflared tunnel` command for `gateway tunnel` / `make tunnel`.
"""

from gateway.tunnel.detector import TunnelDetector, detector_for
from gateway.tunnel.status import Sighting, TunnelStatus, describe

__all__ = ["Sighting", "TunnelDetector", "TunnelStatus", "describe", "detector_for"]
