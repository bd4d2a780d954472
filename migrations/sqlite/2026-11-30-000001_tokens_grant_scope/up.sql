-- The scope the user delegated (the token updateToken or an import stored), which refreshes
-- never change: `scope` is what the IdP granted the last refresh, often narrower. Requests
-- beyond it are refused before the IdP, which may consume a rotating refresh token and then
-- refuse the scope, burning the grant. Existing rows start from `scope`, a subset of their
-- grant: a request between the two is refused until the user logs in again. The default is for
-- rows a replica still on the previous version inserts during a rolling upgrade: '' is an
-- unknown grant, of which nothing is refused.
ALTER TABLE tokens ADD COLUMN grant_scope TEXT NOT NULL DEFAULT '';
UPDATE tokens SET grant_scope = scope;
