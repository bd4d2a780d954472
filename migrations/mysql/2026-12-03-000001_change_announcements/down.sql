DROP TRIGGER client_tokens_announce_delete;
DROP TRIGGER client_tokens_announce_update;
DROP TRIGGER tokens_announce_delete;
DROP TRIGGER tokens_announce_update;
DROP TRIGGER tokens_announce_insert;
DROP TABLE token_changes;
