-- Start-up reads the owners of refresh leases (to void those of processes that are gone): without
-- an index, a read of every row (0.8-1.1 s at a million credentials, bench/README.md "Scale").
-- Few rows ever hold a lease, and only they are indexed.
-- CONCURRENTLY (outside a transaction, metadata.toml; one statement per migration, since a
-- multi-statement string is one transaction): the replicas still serving during a rolling
-- upgrade go on writing tokens while it is built (a plain CREATE INDEX blocks their writes).
CREATE INDEX CONCURRENTLY IF NOT EXISTS tokens_lease_owner ON tokens (lease_owner) WHERE lease_owner IS NOT NULL;
