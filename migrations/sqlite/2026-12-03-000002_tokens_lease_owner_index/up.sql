-- Start-up reads the owners of refresh leases (to void those of processes that are gone): without
-- an index, a read of every row. Few rows ever hold a lease, and only they are indexed.
CREATE INDEX tokens_lease_owner ON tokens (lease_owner) WHERE lease_owner IS NOT NULL;
