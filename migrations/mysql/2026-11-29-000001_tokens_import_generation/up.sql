-- The generation at which `import-dirac-tokendb` wrote the row (NULL for rows the service wrote).
-- Every token write moves `generation`, so while the two are equal the row is an untouched import,
-- which a later import may replace with DIRAC's newer token; any other row is never overwritten.
ALTER TABLE tokens ADD COLUMN import_generation BIGINT;
