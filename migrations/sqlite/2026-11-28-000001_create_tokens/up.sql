-- One stored credential per (user_id, provider). Token values are AES-256-GCM ciphertexts
-- (see src/crypto); timestamps are Unix seconds, as in DIRAC's Token table.
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    generation BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    refresh_token BLOB NOT NULL,
    rt_expires_at BIGINT NOT NULL,
    access_token BLOB,
    expires_at BIGINT NOT NULL DEFAULT 0,
    expires_in BIGINT NOT NULL DEFAULT 0,
    token_type TEXT,
    scope TEXT NOT NULL DEFAULT '',
    audience TEXT,
    client_id TEXT,
    issued_at BIGINT NOT NULL,
    access_token_revoked_at BIGINT NOT NULL DEFAULT 0,
    refresh_token_revoked_at BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT tokens_user_provider UNIQUE (user_id, provider)
);
CREATE INDEX tokens_rt_expires_at ON tokens (rt_expires_at);
CREATE INDEX tokens_key_id ON tokens (key_id);
