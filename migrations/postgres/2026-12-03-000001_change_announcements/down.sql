DROP TRIGGER client_tokens_announce ON client_tokens;
DROP TRIGGER tokens_announce ON tokens;
DROP FUNCTION tokenmanager_announce();
