ALTER TABLE tokens DROP COLUMN grant_scope;
