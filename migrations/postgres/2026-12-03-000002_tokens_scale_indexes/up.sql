-- What reads every row without an index, at each start and every few seconds, and so grows with
-- the number of stored credentials (bench/README.md, "Scale"):
-- * start-up reads the owners of refresh leases (to void those of processes that are gone);
--   few rows ever hold a lease, and only they are indexed;
-- * the background counts of tokenmanager_stored_credentials (by provider and state) and
--   tokenmanager_expiring_credentials (by provider, active, refresh-token expiry) read this
--   index alone instead of the rows.
CREATE INDEX tokens_lease_owner ON tokens (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX tokens_provider_state_rt_expires_at ON tokens (provider, state, rt_expires_at);
