DROP INDEX tokens_provider_state_rt_expires_at ON tokens;
DROP INDEX tokens_lease_owner ON tokens;
