"""PostgreSQL backend (asyncpg, pooled): the same `Store` contract as SQLite, for several
gateway instances sharing one database.

Callbacks for one call serialize on transaction-scoped advisory locks keyed by the run id
and the provider's call id, so the lifecycle rules hold exactly as on one instance. Delivery
workers on every instance claim due rows with `FOR UPDATE SKIP LOCKED` and a lease. Commits
that queue deliveries `NOTIFY gateway_deliveries`, so idle workers everywhere wake at once
(each instance's `PostgresListener` LISTENs, and holds leadership, on a session it keeps alive).
"""

from __future__ import annotations

from gateway.store.postgres_calls import PostgresCalls
from gateway.store.postgres_campaigns import PostgresCampaigns
from gateway.store.postgres_outbox import PostgresOutbox
from gateway.store.postgres_pool import split_store_url


class PostgresStore(PostgresCalls, PostgresOutbox, PostgresCampaigns):
    """The scale-out store: calls (`postgres_calls`), events (`postgres_events`), the outbox
    (`postgres_outbox`) and campaigns (`postgres_campaigns`) on one pool (`postgres_pool`)."""


__all__ = ["PostgresStore", "split_store_url"]
