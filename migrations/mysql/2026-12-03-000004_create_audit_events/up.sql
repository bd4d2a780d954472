-- The audit trail (docs/OPERATIONS.md#the-audit-trail): append-only, one row per credential change
-- and per token handout, handouts of one (caller, subject, token key, protocol, origin, outcome)
-- aggregated per window (first_at..last_at, occurrences, up to 8 distinct client addresses). No
-- token value is ever written here. Rows older than AuditRetention are purged in small batches.
CREATE TABLE audit_events (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    occurrences BIGINT NOT NULL,
    kind VARCHAR(32) NOT NULL,
    origin VARCHAR(16),
    outcome VARCHAR(64) NOT NULL,
    caller TEXT,
    caller_group VARCHAR(255),
    on_behalf_of VARCHAR(255),
    user_id VARCHAR(255),
    provider VARCHAR(255),
    client_id VARCHAR(255),
    scopes TEXT,
    audience TEXT,
    protocol VARCHAR(16) NOT NULL,
    client_addresses TEXT,
    replica VARCHAR(255) NOT NULL,
    detail TEXT,
    INDEX audit_events_last_at (last_at),
    INDEX audit_events_user (user_id, last_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
