"""Versioned schema migrations, one list for every backend.

Each migration names its SQL per dialect; `open()` applies the missing ones in order, in a
transaction, and records them in `schema_migrations`. Never edit a released migration: add one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: str
    postgresql: str


_CALLS = """
CREATE TABLE calls (
    workflow_run_id   TEXT PRIMARY KEY,
    workflow_id       TEXT,
    user_id           TEXT,
    provider          TEXT,
    provider_call_id  TEXT,
    state             TEXT NOT NULL,
    from_number       TEXT,
    to_number         TEXT,
    direction         TEXT,
    started_at        {ts},
    answered_at       {ts},
    ended_at          {ts},
    duration          INTEGER,
    voicemail         {bool} NOT NULL DEFAULT {false},
    answered_by       TEXT,
    last_sequence     BIGINT,
    initial_context   {json} NOT NULL DEFAULT '{{}}',
    gathered_context  {json} NOT NULL DEFAULT '{{}}',
    annotations       {json} NOT NULL DEFAULT '{{}}',
    cost_info         {json} NOT NULL DEFAULT '{{}}',
    media             {json} NOT NULL DEFAULT '{{}}',
    created_at        {ts} NOT NULL,
    updated_at        {ts} NOT NULL
);
CREATE UNIQUE INDEX calls_provider_call ON calls (provider, provider_call_id) WHERE provider_call_id IS NOT NULL;
CREATE INDEX calls_created ON calls (created_at DESC, workflow_run_id DESC);
CREATE INDEX calls_state_created ON calls (state, created_at DESC, workflow_run_id DESC);
CREATE TABLE call_timeline (
    id                {serial} PRIMARY KEY,
    workflow_run_id   TEXT NOT NULL REFERENCES calls (workflow_run_id),
    received_at       {ts} NOT NULL,
    source            TEXT NOT NULL,
    kind              TEXT NOT NULL,
    outcome           TEXT NOT NULL,
    raw_status        TEXT,
    state             TEXT,
    sequence          BIGINT,
    data              {json} NOT NULL
);
CREATE INDEX call_timeline_run ON call_timeline (workflow_run_id, id);
CREATE TABLE events (
    seq               {serial} PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    type              TEXT NOT NULL,
    workflow_run_id   TEXT,
    occurred_at       {ts} NOT NULL,
    data              {json} NOT NULL
);
CREATE INDEX events_run ON events (workflow_run_id, seq);
"""

_SQLITE = {"ts": "TEXT", "bool": "INTEGER", "false": "0", "json": "TEXT", "serial": "INTEGER"}
_POSTGRES = {"ts": "TIMESTAMPTZ", "bool": "BOOLEAN", "false": "FALSE", "json": "JSONB", "serial": "BIGSERIAL"}


_DELIVERIES = """
CREATE TABLE deliveries (
    id                TEXT PRIMARY KEY,
    event_seq         BIGINT NOT NULL REFERENCES events (seq),
    subscription      TEXT NOT NULL,
    workflow_run_id   TEXT,
    order_key         TEXT,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   {ts} NOT NULL,
    lease_owner       TEXT,
    lease_until       {ts},
    first_attempt_at  {ts},
    last_attempt_at   {ts},
    last_status       INTEGER,
    last_error        TEXT,
    created_at        {ts} NOT NULL,
    updated_at        {ts} NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_order ON deliveries (subscription, order_key, event_seq) WHERE status = 'pending';
CREATE INDEX deliveries_listing ON deliveries (created_at DESC, id DESC);
CREATE INDEX deliveries_run ON deliveries (workflow_run_id);
CREATE TABLE delivery_attempts (
    id                {serial} PRIMARY KEY,
    delivery_id       TEXT NOT NULL REFERENCES deliveries (id),
    attempted_at      {ts} NOT NULL,
    outcome           TEXT NOT NULL,
    status            INTEGER,
    latency_ms        REAL,
    error             TEXT,
    response          TEXT,
    request           {json} NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);
CREATE TABLE subscription_health (
    subscription          TEXT PRIMARY KEY,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    first_failure_at      {ts},
    disabled_at           {ts},
    disabled_reason       TEXT
);
"""

_CAMPAIGNS = """
CREATE TABLE campaigns (
    id                TEXT PRIMARY KEY,
    name              TEXT,
    workflow_id       TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    provider          TEXT NOT NULL,
    from_number       TEXT NOT NULL,
    status            TEXT NOT NULL,
    options           {json} NOT NULL,
    origin            TEXT NOT NULL,
    webhook_secret    TEXT,
    total             INTEGER NOT NULL,
    dialed            INTEGER NOT NULL DEFAULT 0,
    quota             TEXT,
    error             TEXT,
    error_code        TEXT,
    created_at        {ts} NOT NULL,
    started_at        {ts},
    completed_at      {ts},
    updated_at        {ts} NOT NULL
);
CREATE INDEX campaigns_status ON campaigns (status);
CREATE INDEX campaigns_created ON campaigns (created_at DESC, id DESC);
CREATE TABLE campaign_contacts (
    campaign_id       TEXT NOT NULL REFERENCES campaigns (id),
    position          INTEGER NOT NULL,
    phone             TEXT NOT NULL,
    name              TEXT,
    context           {json} NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   {ts},
    workflow_run_id   TEXT,
    outcome           TEXT,
    updated_at        {ts} NOT NULL,
    PRIMARY KEY (campaign_id, position)
);
CREATE INDEX campaign_contacts_due ON campaign_contacts (campaign_id, status, position);
CREATE INDEX campaign_contacts_dialing ON campaign_contacts (status) WHERE status = 'dialing';
CREATE TABLE campaign_calls (
    workflow_run_id   TEXT PRIMARY KEY,
    campaign_id       TEXT NOT NULL REFERENCES campaigns (id),
    position          INTEGER NOT NULL,
    attempt           INTEGER NOT NULL,
    outcome           TEXT,
    created_at        {ts} NOT NULL
);
CREATE INDEX campaign_calls_campaign ON campaign_calls (campaign_id, position);
"""

_LEASES = """
ALTER TABLE deliveries ADD COLUMN lease_id TEXT;
ALTER TABLE deliveries ADD COLUMN resend {bool} NOT NULL DEFAULT {false};
ALTER TABLE delivery_attempts ADD COLUMN attempt_id TEXT;
CREATE UNIQUE INDEX delivery_attempts_attempt ON delivery_attempts (attempt_id);
"""
"""Leases with an id of their own (a finish counts only under the lease it was sent under), a
retry asked for while an attempt is in flight (`resend`), and attempts recorded once each."""

_CLAIM_INDEX = """
CREATE INDEX deliveries_due_by_subscription ON deliveries (subscription, next_attempt_at, event_seq) WHERE status = 'pending';
"""
"""PostgreSQL claims each subscription's due rows on their own (SQLite walks `deliveries_due`)."""

_NONCES = """
CREATE TABLE seen_nonces (
    nonce             TEXT PRIMARY KEY,
    expires_at        {ts} NOT NULL
);
CREATE INDEX seen_nonces_expiry ON seen_nonces (expires_at);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "calls, timeline, events", _CALLS.format(**_SQLITE), _CALLS.format(**_POSTGRES)),
    Migration(
        2,
        "webhook deliveries, attempts, endpoint health",
        _DELIVERIES.format(**_SQLITE),
        _DELIVERIES.format(**_POSTGRES),
    ),
    Migration(3, "campaigns, their contacts and calls", _CAMPAIGNS.format(**_SQLITE), _CAMPAIGNS.format(**_POSTGRES)),
    Migration(4, "signed-request ids seen (replay protection)", _NONCES.format(**_SQLITE), _NONCES.format(**_POSTGRES)),
    Migration(
        5,
        "delivery lease ids, resend marks, attempt ids",
        _LEASES.format(**_SQLITE),
        _LEASES.format(**_POSTGRES) + _CLAIM_INDEX,
    ),
)
