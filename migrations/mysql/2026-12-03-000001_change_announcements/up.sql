-- Every change of a credential or of a shared client token is appended here by the database
-- itself: whoever writes (a replica of any release, a command-line tool, an operator's SQL) is
-- covered. Replicas read it from their last position; ids are allocated when the row is
-- written, not when its transaction commits, so they may become visible out of order (see
-- src/db/changes.rs for how readers skip none). Writes that change nothing a cache holds
-- (refresh leases, re-encryption by rotate-key) keep the generation and are not logged.
-- generation NULL: the row is gone. Rows older than the retention are pruned by the replicas.
CREATE TABLE token_changes (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind VARCHAR(16) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    provider VARCHAR(255) NOT NULL,
    row_id BIGINT NOT NULL,
    generation BIGINT,
    created_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX token_changes_created_at ON token_changes (created_at);

CREATE TRIGGER tokens_announce_insert AFTER INSERT ON tokens FOR EACH ROW
    INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
    VALUES ('credential', NEW.user_id, NEW.provider, NEW.id, NEW.generation, UNIX_TIMESTAMP());
CREATE TRIGGER tokens_announce_update AFTER UPDATE ON tokens FOR EACH ROW
    IF NEW.generation <> OLD.generation THEN
        INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
        VALUES ('credential', NEW.user_id, NEW.provider, NEW.id, NEW.generation, UNIX_TIMESTAMP());
    END IF;
CREATE TRIGGER tokens_announce_delete AFTER DELETE ON tokens FOR EACH ROW
    INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
    VALUES ('credential', OLD.user_id, OLD.provider, OLD.id, NULL, UNIX_TIMESTAMP());
CREATE TRIGGER client_tokens_announce_update AFTER UPDATE ON client_tokens FOR EACH ROW
    IF NEW.generation <> OLD.generation THEN
        INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
        VALUES ('client', NEW.token_key, NEW.provider, NEW.id, NEW.generation, UNIX_TIMESTAMP());
    END IF;
CREATE TRIGGER client_tokens_announce_delete AFTER DELETE ON client_tokens FOR EACH ROW
    INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
    VALUES ('client', OLD.token_key, OLD.provider, OLD.id, NULL, UNIX_TIMESTAMP());
