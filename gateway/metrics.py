"""The gateway's Prometheus metrics: one registry, every metric defined here once.

Hot-path counts (frames) are not incremented per frame: live media sessions keep plain
integers and a collector sums them (plus the totals of finished sessions) at scrape time.

Every count is made in the gateway's own process (delivery processes make attempts; the
gateway's worker counts them). When an operator runs prometheus_client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR` set before this module is imported; `gateway serve --workers N`
sets it for its workers), `exposition()` sums the processes' files, the media counts included
(`gateway.workers.metrics`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

CALL_TRANSITIONS = Counter(
    "gateway_call_transitions_total", "Call state changes, by the state reached", ["state"], registry=REGISTRY
)
PROVIDER_REQUESTS = Counter(
    "gateway_provider_requests_total",
    "Provider requests by route kind and outcome",
    ["provider", "route", "outcome"],
    registry=REGISTRY,
)
SIGNATURE_FAILURES = Counter(
    "gateway_signature_failures_total", "Provider requests refused for their signature", ["provider"], registry=REGISTRY
)
REFUSALS = Counter("gateway_refusals_total", "Requests refused by a protective limit", ["limit"], registry=REGISTRY)
BODIES_CUT_SHORT = Counter(
    "gateway_bodies_cut_short_total", "Requests whose client went away before its whole body arrived", registry=REGISTRY
)
AGENT_CONNECT_FAILURES = Counter(
    "gateway_agent_connect_failures_total", "Agent connections that failed or dropped", registry=REGISTRY
)
DELIVERIES = Counter(
    "gateway_deliveries_total",
    "Webhook delivery attempts by subscription and outcome",
    ["subscription", "outcome"],
    registry=REGISTRY,
)
LATE_FINISHES = Counter(
    "gateway_delivery_late_finishes_total",
    "Attempts that finished after their lease was lost: recorded as history, the delivery unchanged",
    ["subscription"],
    registry=REGISTRY,
)
UNBUILDABLE = Counter(
    "gateway_deliveries_unbuildable_total",
    "Deliveries failed with no request sent: it could not be"
    " built (a missing secret; a header rendered from call data with a line break)",
    ["subscription"],
    registry=REGISTRY,
)
ATTEMPT_LATENCY = Histogram(
    "gateway_delivery_attempt_seconds",
    "Webhook attempt latency",
    ["subscription"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
OUTBOX_PENDING = Gauge(
    "gateway_outbox_pending", "Deliveries waiting to be sent", registry=REGISTRY, multiprocess_mode="mostrecent"
)
OUTBOX_OLDEST = Gauge(
    "gateway_outbox_oldest_pending_seconds",
    "Age of the oldest pending delivery",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
CODEC_SECONDS = Histogram(
    "gateway_codec_seconds",
    "Time to transcode one 20 ms frame (sampled 1 in 50)",
    ["direction"],
    buckets=(5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3),
    registry=REGISTRY,
)


@lru_cache(maxsize=1024)
def labelled(metric: Any, *labels: str) -> Any:
    """A metric's child for these label values, kept: `labels()` takes a lock and builds its
    key every time, and the hot paths count the same few label sets over and over."""
    return metric.labels(*labels)


class MediaStats:
    """Live media sessions and their frame counters, summed at scrape time."""

    FIELDS = ("frames_in", "frames_out", "inbound_dropped", "outbound_dropped", "misframed", "bad_messages")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, Any] = {}
        self._finished = dict.fromkeys(self.FIELDS, 0)

    def add(self, counters: Any) -> None:
        with self._lock:
            self._live[id(counters)] = counters

    def remove(self, counters: Any) -> None:
        with self._lock:
            if self._live.pop(id(counters), None) is not None:
                for name in self.FIELDS:
                    self._finished[name] += getattr(counters, name, 0)

    @property
    def active(self) -> int:
        return len(self._live)

    def snapshot(self) -> tuple[int, dict[str, int]]:
        """(live sessions, frame totals by kind) now."""
        with self._lock:
            totals = dict(self._finished)
            for counters in self._live.values():
                for name in self.FIELDS:
                    totals[name] += getattr(counters, name, 0)
            return len(self._live), totals

    def collect(self) -> Iterable[Any]:
        active, totals = self.snapshot()
        yield GaugeMetricFamily("gateway_media_sessions_active", "Live media sessions", value=active)
        frames = CounterMetricFamily("gateway_media_frames", "Media frames by direction and fate", labels=["kind"])
        for name, value in totals.items():
            frames.add_metric([name], value)
        yield frames


MEDIA = MediaStats()
REGISTRY.register(MEDIA)


def exposition() -> bytes:
    """The text exposition of every metric: this process's, or every process's when shared."""
    from prometheus_client import generate_latest

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(REGISTRY)
    from prometheus_client import multiprocess

    from gateway.workers.metrics import publish_media

    publish_media()  # this process's media counts, as the other processes publish theirs
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
