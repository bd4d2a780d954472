DROP INDEX tokens_lease_owner;
