ALTER TABLE tokens DROP COLUMN import_generation;
