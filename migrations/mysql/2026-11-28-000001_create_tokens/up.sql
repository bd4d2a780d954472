-- One stored credential per (user_id, provider). Token values are AES-256-GCM ciphertexts
-- (see src/crypto); timestamps are Unix seconds, as in DIRAC's Token table. The unique key's
-- two VARCHAR(255) columns fit InnoDB's 3072-byte key limit in utf8mb4.
CREATE TABLE tokens (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id VARCHAR(255) NOT NULL,
    provider VARCHAR(255) NOT NULL,
    state VARCHAR(32) NOT NULL DEFAULT 'active',
    generation BIGINT NOT NULL,
    key_id VARCHAR(64) NOT NULL,
    refresh_token BLOB NOT NULL,
    rt_expires_at BIGINT NOT NULL,
    access_token BLOB,
    expires_at BIGINT NOT NULL DEFAULT 0,
    expires_in BIGINT NOT NULL DEFAULT 0,
    token_type VARCHAR(40),
    scope TEXT NOT NULL,
    audience TEXT,
    client_id VARCHAR(255),
    issued_at BIGINT NOT NULL,
    access_token_revoked_at BIGINT NOT NULL DEFAULT 0,
    refresh_token_revoked_at BIGINT NOT NULL DEFAULT 0,
    lease_owner VARCHAR(255),
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT tokens_user_provider UNIQUE (user_id, provider),
    INDEX tokens_rt_expires_at (rt_expires_at),
    INDEX tokens_key_id (key_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
