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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "calls, timeline, events", _CALLS.format(**_SQLITE), _CALLS.format(**_POSTGRES)),
)
