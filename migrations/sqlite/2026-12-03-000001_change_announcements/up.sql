-- Every change of a credential or of a shared client token is appended here by the database
-- itself, so that `serve` notices what command-line tools (import-dirac-tokendb, an operator's
-- SQL) write while it runs. SQLite has one writer at a time: ids become visible in order.
-- Writes that change nothing a cache holds (refresh leases, re-encryption by rotate-key) keep
-- the generation and are not logged. generation NULL: the row is gone. Rows older than the
-- retention are pruned by `serve`.
CREATE TABLE token_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    provider TEXT NOT NULL,
    row_id BIGINT NOT NULL,
    generation BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX token_changes_created_at ON token_changes (created_at);

CREATE TRIGGER tokens_announce_insert AFTER INSERT ON tokens FOR EACH ROW BEGIN
    INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
    VALUES ('credential', NEW.user_id, NEW.provider, NEW.id, NEW.generation, unixepoch());
END;
CREATE TRIGGER tokens_announce_update AFTER UPDATE ON tokens FOR EACH ROW
    WHEN NEW.generation <> OLD.generation BEGIN
    INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
    VALUES ('credential', NEW.user_id, NEW.provider, NEW.id, NEW.generation, unixepoch());
END;
CREATE TRIGGER tokens_announce_delete AFTER DELETE ON tokens FOR EACH ROW BEGIN
    INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
    VALUES ('credential', OLD.user_id, OLD.provider, OLD.id, NULL, unixepoch());
END;
CREATE TRIGGER client_tokens_announce_update AFTER UPDATE ON client_tokens FOR EACH ROW
    WHEN NEW.generation <> OLD.generation BEGIN
    INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
    VALUES ('client', NEW.token_key, NEW.provider, NEW.id, NEW.generation, unixepoch());
END;
CREATE TRIGGER client_tokens_announce_delete AFTER DELETE ON client_tokens FOR EACH ROW BEGIN
    INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at)
    VALUES ('client', OLD.token_key, OLD.provider, OLD.id, NULL, unixepoch());
END;
