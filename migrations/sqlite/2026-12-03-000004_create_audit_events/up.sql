-- The audit trail (docs/OPERATIONS.md#the-audit-trail): append-only, one row per credential change
-- and per token handout, handouts of one (caller, subject, token key, protocol, origin, outcome)
-- aggregated per window (first_at..last_at, occurrences, up to 8 distinct client addresses). No
-- token value is ever written here. Rows older than AuditRetention are purged in small batches.
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    occurrences BIGINT NOT NULL,
    kind TEXT NOT NULL,
    origin TEXT,
    outcome TEXT NOT NULL,
    caller TEXT,
    caller_group TEXT,
    on_behalf_of TEXT,
    user_id TEXT,
    provider TEXT,
    client_id TEXT,
    scopes TEXT,
    audience TEXT,
    protocol TEXT NOT NULL,
    client_addresses TEXT,
    replica TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_events_last_at ON audit_events (last_at);
CREATE INDEX audit_events_user ON audit_events (user_id, last_at);
