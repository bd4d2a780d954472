-- Start-up reads the owners of refresh leases (to void those of processes that are gone): without
-- an index, a read of every row. InnoDB adds a secondary index in place, the service's writes
-- going on meanwhile.
CREATE INDEX tokens_lease_owner ON tokens (lease_owner);
