"""How long one attempt may take, and so how long a lease must be: one source for the worker,
the delivery processes and the config check.

An attempt (the OAuth2 token fetch and the one resend after a 401 included) ends within its
subscription's `timeout` (`gateway.webhooks.sender`). The worker gives it `ATTEMPT_GRACE` more
(rendering, reading the call, a delivery process's pipe) before it records a failed attempt
without waiting any longer. A lease must cover that and the recording: at least the timeout +
`LEASE_MARGIN`, or a row could be sent again while its first attempt is still out.
"""

from __future__ import annotations

from collections.abc import Iterable

ATTEMPT_GRACE = 5.0
LEASE_MARGIN = 10.0
DEFAULT_LEASE_EXTRA = 30.0


def attempt_deadline(timeout: float) -> float:
    """Seconds the worker waits for an attempt of a subscription with this `timeout`."""
    return timeout + ATTEMPT_GRACE


def shortest_lease(timeouts: Iterable[float]) -> float:
    """The shortest `delivery.lease_seconds` that covers an attempt of each of these timeouts."""
    return max(timeouts, default=0.0) + LEASE_MARGIN


def default_lease(timeouts: Iterable[float]) -> float:
    """`delivery.lease_seconds: 0`: the longest timeout (30 s without any) + 30 s."""
    return max(timeouts, default=30.0) + DEFAULT_LEASE_EXTRA
