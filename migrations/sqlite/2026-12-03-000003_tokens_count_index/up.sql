-- The background count of tokenmanager_stored_credentials and tokenmanager_expiring_credentials
-- (by provider, state and refresh-token expiry) reads this index alone instead of every row.
CREATE INDEX tokens_provider_state_rt_expires_at ON tokens (provider, state, rt_expires_at);
