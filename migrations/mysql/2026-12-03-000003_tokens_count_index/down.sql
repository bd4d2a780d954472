DROP INDEX tokens_provider_state_rt_expires_at ON tokens;
