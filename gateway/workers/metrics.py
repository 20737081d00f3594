"""`/metrics` as one view of every worker: prometheus_client's multiprocess mode.

The supervisor gives its workers a fresh `PROMETHEUS_MULTIPROC_DIR`; every counter and histogram
is then written to a per-process file and any worker's `/metrics` sums them all (a dead worker's
counts included). The outbox gauges are `mostrecent` (they describe the one database). The media
counts are kept as plain integers on the hot path (`gateway.metrics.MediaStats`), which another
process cannot read: each worker publishes them every `PUBLISH_SECONDS` (and the scraping worker
at the scrape) into `gateway_media_sessions_active` (a `livesum` gauge: a dead worker's sessions
drop out) and `gateway_media_frames_total` (a counter, advanced by what changed since the last
publication). So another worker's media counts may be up to `PUBLISH_SECONDS` old.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge

from gateway.metrics import MEDIA, MediaStats

PUBLISH_SECONDS = 1.0

# Not in gateway.metrics.REGISTRY (whose media collector has these names); in multiprocess mode
# the values go to this process's files whatever registry holds them.
_ACTIVE = Gauge("gateway_media_sessions_active", "Live media sessions", registry=None, multiprocess_mode="livesum")
_FRAMES = Counter("gateway_media_frames", "Media frames by direction and fate", ["kind"], registry=None)
_published = dict.fromkeys(MediaStats.FIELDS, 0)
_lock = threading.Lock()


def publish_media() -> None:
    """Write this process's media counts where every process's `/metrics` reads them."""
    active, totals = MEDIA.snapshot()
    with _lock:
        _ACTIVE.set(active)
        for kind, value in totals.items():
            if value > _published[kind]:
                _FRAMES.labels(kind).inc(value - _published[kind])
                _published[kind] = value


def start_publishing(every: float = PUBLISH_SECONDS) -> threading.Thread:
    """Publish the media counts every `every` seconds from a daemon thread, for this process's life."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            publish_media()

    thread = threading.Thread(target=loop, name="media-metrics", daemon=True)
    thread.start()
    return thread
