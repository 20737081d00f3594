"""The store's errors (every backend raises these, never its driver's)."""

from __future__ import annotations

from gateway.errors import GatewayError


class StoreError(GatewayError):
    """The store could not do what was asked (unreachable, corrupt, bad cursor...)."""


class ClaimLost(StoreError):
    """A campaign call's record was not written because its contact's claim no longer holds
    the call's run id (another instance released or settled it): the call must not be dialed."""


def claim_lost(claim: tuple[str, int], run_id: str | None) -> ClaimLost:
    """The `ClaimLost` for campaign `claim` (campaign id, position) and its run id."""
    return ClaimLost(f"campaign {claim[0]} contact {claim[1]} no longer holds run {run_id}: not dialed")
