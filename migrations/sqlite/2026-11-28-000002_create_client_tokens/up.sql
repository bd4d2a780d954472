-- DIRAC's own (client_credentials) access tokens, one row per token key (IdP, client, scope set,
-- audience), shared by replicas: the lease makes one replica at a time ask the IdP, the others
-- serve the token it stores. The access token is an AES-256-GCM ciphertext.
CREATE TABLE client_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_key TEXT NOT NULL,
    provider TEXT NOT NULL,
    scope TEXT NOT NULL,
    audience TEXT,
    generation BIGINT NOT NULL,
    key_id TEXT,
    access_token BLOB,
    token_type TEXT,
    expires_at BIGINT NOT NULL DEFAULT 0,
    expires_in BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    updated_at BIGINT NOT NULL,
    CONSTRAINT client_tokens_key UNIQUE (token_key)
);
