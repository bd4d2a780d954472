-- One stored credential per (user_id, provider). Token values are AES-256-GCM ciphertexts
-- (see src/crypto); timestamps are Unix seconds, as in DIRAC's Token table.
CREATE TABLE tokens (
    id BIGSERIAL PRIMARY KEY,
    user_id VARCHAR(255) NOT NULL,
    provider VARCHAR(255) NOT NULL,
    state VARCHAR(32) NOT NULL DEFAULT 'active',
    generation BIGINT NOT NULL,
    key_id VARCHAR(64) NOT NULL,
    refresh_token BYTEA NOT NULL,
    rt_expires_at BIGINT NOT NULL,
    access_token BYTEA,
    expires_at BIGINT NOT NULL DEFAULT 0,
    expires_in BIGINT NOT NULL DEFAULT 0,
    token_type VARCHAR(40),
    scope TEXT NOT NULL DEFAULT '',
    audience TEXT,
    client_id VARCHAR(255),
    issued_at BIGINT NOT NULL,
    access_token_revoked_at BIGINT NOT NULL DEFAULT 0,
    refresh_token_revoked_at BIGINT NOT NULL DEFAULT 0,
    lease_owner VARCHAR(255),
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT tokens_user_provider UNIQUE (user_id, provider)
);
CREATE INDEX tokens_rt_expires_at ON tokens (rt_expires_at);
CREATE INDEX tokens_key_id ON tokens (key_id);
