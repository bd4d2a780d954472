-- The background count of tokenmanager_stored_credentials and tokenmanager_expiring_credentials
-- (by provider, state and refresh-token expiry) reads this index alone instead of every row.
-- CONCURRENTLY, as 2026-12-03-000002: a plain build blocked a token write for 4 s at a million
-- credentials (bench/README.md "Scale").
CREATE INDEX CONCURRENTLY IF NOT EXISTS tokens_provider_state_rt_expires_at ON tokens (provider, state, rt_expires_at);
