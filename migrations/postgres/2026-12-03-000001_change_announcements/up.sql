-- Every change of a credential or of a shared client token is announced to the replicas on
-- channel tokenmanager_changes, by the database itself: whoever writes (a replica of any
-- release, a command-line tool, an operator's SQL) is covered, and the notification is sent
-- when the writing transaction commits, in commit order. Writes that change nothing a cache
-- holds (refresh leases, re-encryption by rotate-key) keep the generation and are not announced.
-- The payload: {"kind", "subject" (user id or client-token key), "provider", "row_id",
-- "generation" (null: the row is gone)}.
CREATE FUNCTION tokenmanager_announce() RETURNS trigger AS $$
DECLARE
    row_after RECORD;
    kind TEXT;
    subject TEXT;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.generation = OLD.generation THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        row_after := OLD;
    ELSE
        row_after := NEW;
    END IF;
    -- One branch per table: a record's fields are resolved when a statement runs.
    IF TG_TABLE_NAME = 'tokens' THEN
        kind := 'credential';
        subject := row_after.user_id;
    ELSE
        kind := 'client';
        subject := row_after.token_key;
    END IF;
    PERFORM pg_notify('tokenmanager_changes', json_build_object(
        'kind', kind,
        'subject', subject,
        'provider', row_after.provider,
        'row_id', row_after.id,
        'generation', CASE TG_OP WHEN 'DELETE' THEN NULL ELSE row_after.generation END
    )::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER tokens_announce AFTER INSERT OR UPDATE OR DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION tokenmanager_announce();
CREATE TRIGGER client_tokens_announce AFTER UPDATE OR DELETE ON client_tokens
    FOR EACH ROW EXECUTE FUNCTION tokenmanager_announce();
