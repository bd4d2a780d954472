use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::schema::{client_tokens, tokens};
use super::{DbConn, DbError};
use crate::crypto::{Keyring, SealContext, SharedKeyring, TokenColumn};
use crate::domain::{CredentialState, NewToken, Secret};

/// How often a write that lost a race (unique-key insert, busy SQLite file, MySQL deadlock) is
/// tried again before the error reaches the caller: with the doubling back-off, about 8 s, since
/// SQLite refuses a deferred transaction's upgrade to a write at once, without its busy timeout.
const WRITE_ATTEMPTS: u32 = 12;

#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = tokens)]
struct TokenRow {
    id: i64,
    user_id: String,
    provider: String,
    state: String,
    generation: i64,
    key_id: String,
    refresh_token: Vec<u8>,
    rt_expires_at: i64,
    access_token: Option<Vec<u8>>,
    expires_at: i64,
    expires_in: i64,
    token_type: Option<String>,
    scope: String,
    audience: Option<String>,
    client_id: Option<String>,
    issued_at: i64,
    access_token_revoked_at: i64,
    refresh_token_revoked_at: i64,
    lease_owner: Option<String>,
    lease_expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    grant_scope: String,
}

/// The row fields a token write sets; the ciphertexts are made from `NewToken`/`TokenUpdate`.
#[derive(AsChangeset, Insertable)]
#[diesel(table_name = tokens, treat_none_as_null = true)]
struct TokenWrite<'a> {
    user_id: &'a str,
    provider: &'a str,
    state: &'a str,
    generation: i64,
    key_id: &'a str,
    refresh_token: &'a [u8],
    rt_expires_at: i64,
    access_token: Option<&'a [u8]>,
    expires_at: i64,
    expires_in: i64,
    token_type: Option<&'a str>,
    scope: &'a str,
    audience: Option<&'a str>,
    client_id: Option<&'a str>,
    issued_at: i64,
    access_token_revoked_at: i64,
    refresh_token_revoked_at: i64,
    lease_owner: Option<&'a str>,
    lease_expires_at: Option<i64>,
    updated_at: i64,
    grant_scope: &'a str,
}

impl<'a> TokenWrite<'a> {
    /// A new login's row (updateToken, an import): generation 1, active, no lease, no audience,
    /// and the delegated token's scope as the grant's.
    fn of(token: &'a NewToken, sealed: &'a Sealed, now: i64) -> Self {
        Self {
            user_id: &token.user_id,
            provider: &token.provider,
            state: CredentialState::Active.as_str(),
            generation: 1,
            key_id: &sealed.key_id,
            refresh_token: &sealed.refresh_token,
            rt_expires_at: token.rt_expires_at,
            access_token: sealed.access_token.as_deref(),
            expires_at: token.expires_at,
            expires_in: token.expires_in,
            token_type: token.token_type.as_deref(),
            scope: &token.scope,
            audience: None,
            client_id: token.client_id.as_deref(),
            issued_at: token.issued_at,
            access_token_revoked_at: 0,
            refresh_token_revoked_at: 0,
            lease_owner: None,
            lease_expires_at: None,
            updated_at: now,
            grant_scope: &token.scope,
        }
    }
}

/// Identifies one state of one stored credential. The row id is part of it because a credential
/// deleted and stored again starts a new row whose generation counts from 1 again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CredentialVersion {
    pub id: i64,
    pub generation: i64,
}

/// A stored credential with its tokens decrypted.
#[derive(Clone, Debug)]
pub struct StoredToken {
    pub id: i64,
    pub user_id: String,
    pub provider: String,
    pub state: CredentialState,
    pub generation: i64,
    pub key_id: String,
    pub refresh_token: Secret,
    pub rt_expires_at: i64,
    pub access_token: Option<Secret>,
    pub expires_at: i64,
    pub expires_in: i64,
    pub token_type: Option<String>,
    pub scope: String,
    pub audience: Option<String>,
    pub client_id: Option<String>,
    pub issued_at: i64,
    pub access_token_revoked_at: i64,
    pub refresh_token_revoked_at: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The scope the user delegated, space-separated ('' if the delegated token named none):
    /// `scope` is what the last refresh was granted, and never more than this.
    pub grant_scope: String,
}

impl StoredToken {
    pub fn version(&self) -> CredentialVersion {
        CredentialVersion {
            id: self.id,
            generation: self.generation,
        }
    }
}

/// What the token path writes after an IdP exchange: the (possibly rotated) refresh token and the
/// access token it obtained.
#[derive(Clone, Debug)]
pub struct TokenUpdate {
    pub refresh_token: Secret,
    pub rt_expires_at: i64,
    pub access_token: Option<Secret>,
    pub expires_at: i64,
    pub expires_in: i64,
    pub token_type: Option<String>,
    pub scope: String,
    pub audience: Option<String>,
}

/// What `import-dirac-tokendb` did (or, in a dry run, would do) with DIRAC's credential of one
/// (user, provider).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    /// We held no credential for the pair: DIRAC's was inserted.
    Imported,
    /// Our row was an earlier import nobody has written since, and DIRAC's token differs and is
    /// not older: replaced by it.
    Updated,
    /// Our row holds the same refresh token: nothing written.
    Unchanged,
    /// Our row was written by the service (updateToken, a refresh, a refused refresh) since or
    /// instead of an import, a refresh of it is under way, or DIRAC's token is older than the one
    /// imported: ours is kept.
    KeptOurs,
}

impl ImportOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Imported => "imported",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::KeptOurs => "kept_ours",
        }
    }
}

/// A stored credential as `export-dirac-tokendb` sees it: one it can hand to DIRAC, or why not.
#[derive(Debug)]
pub enum ExportCandidate {
    Usable(Box<StoredToken>),
    Skipped {
        id: i64,
        user_id: String,
        provider: String,
        reason: ExportSkip,
    },
}

/// A credential's (user ID, provider).
pub type CredentialPair = (String, String);

/// Why a stored credential is not exported. No variant holds a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportSkip {
    /// The IdP refused its refresh token: DIRAC could not use it either.
    NeedsRedelegation,
    /// Its refresh token has expired (`rt_expires_at <= now`).
    Expired,
    /// It does not decrypt with the keyring (the error, which names no value).
    DoesNotDecrypt(String),
}

/// Stored credentials of one (provider, state), from [`TokenStore::count_credentials`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialCount {
    pub provider: String,
    pub state: String,
    pub stored: i64,
    /// Of them, the usable ones whose refresh token expires before each of the bounds asked.
    pub expiring: [i64; 2],
}

/// What one batch of `rotate-key` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReencryptBatch {
    /// Rows now sealed under the newest key.
    pub rewritten: usize,
    /// Rows a concurrent token write changed between read and write; left for the next sweep.
    pub conflicts: usize,
    /// The highest id the batch read: where the next batch starts. `None`: no row under an
    /// older key lies beyond where it started.
    pub last_id: Option<i64>,
    /// How long its transaction took, commit included: how long it held the rows' locks (on
    /// SQLite, the write lock of the whole file).
    pub transaction: Duration,
}

/// The token operations, with DIRAC's TokenDB semantics where DIRAC is right (see
/// docs/DIRAC.md#reading-and-writing-tokens) and every token value sealed before it reaches the
/// database.
#[derive(Clone, Debug)]
pub struct TokenStore {
    pub(super) keyring: Arc<SharedKeyring>,
}

impl TokenStore {
    pub fn new(keyring: Arc<SharedKeyring>) -> Self {
        Self { keyring }
    }

    /// DIRAC's `updateToken`: the user's row for that provider is replaced (one row per pair,
    /// kept by the unique key) and the replaced credential is returned, so that its refresh token
    /// can be revoked. A replaced row that no longer decrypts is logged and replaced all the same:
    /// a new login is exactly what repairs it.
    pub fn update_token(
        &self,
        conn: &mut DbConn,
        token: &NewToken,
        now: i64,
    ) -> Result<Option<StoredToken>, DbError> {
        retry_lost_races(|| {
            conn.transaction(|conn| {
                let old: Option<TokenRow> = tokens::table
                    .filter(tokens::user_id.eq(&token.user_id))
                    .filter(tokens::provider.eq(&token.provider))
                    .select(TokenRow::as_select())
                    .first(conn)
                    .optional()?;
                let sealed = Sealed::of(&self.keyring.current(), token);
                let mut write = TokenWrite::of(token, &sealed, now);
                match old {
                    None => {
                        diesel::insert_into(tokens::table)
                            .values((write, tokens::created_at.eq(now)))
                            .execute(conn)?;
                        Ok(None)
                    }
                    Some(old) => {
                        write.generation = old.generation + 1;
                        let changed = diesel::update(tokens::table)
                            .filter(tokens::id.eq(old.id))
                            .filter(tokens::generation.eq(old.generation))
                            .set(write)
                            .execute(conn)?;
                        if changed == 0 {
                            return Err(DbError::Conflict { expected: old.generation });
                        }
                        match self.decrypt(old) {
                            Ok(old) => Ok(Some(old)),
                            Err(e) => {
                                tracing::warn!(user_id = %token.user_id, provider = %token.provider, error = %e,
                                    "replaced a stored credential that did not decrypt");
                                Ok(None)
                            }
                        }
                    }
                }
            })
        })
    }

    /// `import-dirac-tokendb`: stores DIRAC's credential of one (user, provider) unless we hold
    /// one of our own. A row is inserted where we hold none; a row that is an untouched earlier
    /// import (its `import_generation` is still its generation, and no refresh lease is live) is
    /// replaced by a different, not older DIRAC token; any other row is left alone. Imported rows
    /// record their generation in `import_generation`, so the next token write by the service
    /// (which moves the generation) makes them ours. With `dry_run` nothing is written.
    pub fn import_token(
        &self,
        conn: &mut DbConn,
        token: &NewToken,
        now: i64,
        dry_run: bool,
    ) -> Result<ImportOutcome, DbError> {
        retry_lost_races(|| {
            conn.transaction(|conn| {
                let old: Option<(TokenRow, Option<i64>)> = tokens::table
                    .filter(tokens::user_id.eq(&token.user_id))
                    .filter(tokens::provider.eq(&token.provider))
                    .select((TokenRow::as_select(), tokens::import_generation))
                    .first(conn)
                    .optional()?;
                let outcome = match &old {
                    None => ImportOutcome::Imported,
                    Some((row, import_generation)) => {
                        let untouched_import = *import_generation == Some(row.generation)
                            && row.lease_expires_at.is_none_or(|until| until < now);
                        let (id, issued_at) = (row.id, row.issued_at);
                        let same = match self.decrypt(row.clone()) {
                            Ok(ours) => ours.refresh_token == token.refresh_token,
                            Err(e) => {
                                tracing::warn!(row = id, error = %e,
                                    "import: a stored credential does not decrypt; treated as different");
                                false
                            }
                        };
                        if same {
                            ImportOutcome::Unchanged
                        } else if untouched_import && token.issued_at >= issued_at {
                            ImportOutcome::Updated
                        } else {
                            ImportOutcome::KeptOurs
                        }
                    }
                };
                if dry_run {
                    return Ok(outcome);
                }
                let sealed = Sealed::of(&self.keyring.current(), token);
                let mut write = TokenWrite::of(token, &sealed, now);
                match (outcome, old) {
                    (ImportOutcome::Imported, _) => {
                        diesel::insert_into(tokens::table)
                            .values((
                                write,
                                tokens::created_at.eq(now),
                                tokens::import_generation.eq(Some(1)),
                            ))
                            .execute(conn)?;
                    }
                    (ImportOutcome::Updated, Some((old, _))) => {
                        write.generation = old.generation + 1;
                        let changed = diesel::update(tokens::table)
                            .filter(tokens::id.eq(old.id))
                            .filter(tokens::generation.eq(old.generation))
                            .set((write, tokens::import_generation.eq(Some(old.generation + 1))))
                            .execute(conn)?;
                        if changed == 0 {
                            return Err(DbError::Conflict {
                                expected: old.generation,
                            });
                        }
                    }
                    _ => {}
                }
                Ok(outcome)
            })
        })
    }

    /// The token path's compare-and-set: writes `update` only if the row is still at `expected`,
    /// so a refresh that raced with another writer (or with updateToken) never overwrites the
    /// newer credential. Returns the row as written.
    ///
    /// The grant's scope is left as it is: the IdP may grant a refresh less than was delegated,
    /// and a later request may still ask for the rest.
    pub fn store_refreshed(
        &self,
        conn: &mut DbConn,
        expected: CredentialVersion,
        user_id: &str,
        provider: &str,
        update: &TokenUpdate,
        now: i64,
    ) -> Result<StoredToken, DbError> {
        let keyring = self.keyring.current();
        let sealed = Sealed::new(
            &keyring,
            user_id,
            provider,
            &update.refresh_token,
            update.access_token.as_ref(),
        );
        let changed = retry_lost_races(|| {
            diesel::update(tokens::table)
                .filter(tokens::id.eq(expected.id))
                .filter(tokens::generation.eq(expected.generation))
                .filter(tokens::user_id.eq(user_id))
                .filter(tokens::provider.eq(provider))
                .set((
                    tokens::generation.eq(expected.generation + 1),
                    tokens::key_id.eq(&sealed.key_id),
                    tokens::refresh_token.eq(&sealed.refresh_token),
                    tokens::rt_expires_at.eq(update.rt_expires_at),
                    tokens::access_token.eq(sealed.access_token.as_deref()),
                    tokens::expires_at.eq(update.expires_at),
                    tokens::expires_in.eq(update.expires_in),
                    tokens::token_type.eq(update.token_type.as_deref()),
                    tokens::scope.eq(&update.scope),
                    tokens::audience.eq(update.audience.as_deref()),
                    tokens::updated_at.eq(now),
                    // The refresh this lease guarded is done.
                    tokens::lease_owner.eq(None::<String>),
                    tokens::lease_expires_at.eq(None::<i64>),
                ))
                .execute(conn)
                .map_err(DbError::from)
        })?;
        if changed == 0 {
            return Err(DbError::Conflict {
                expected: expected.generation,
            });
        }
        self.credential(conn, user_id, provider)?
            .ok_or(DbError::Conflict {
                expected: expected.generation,
            })
    }

    /// Takes the refresh lease of a credential for `owner` until `until`, if nobody else holds a
    /// live one and the credential is still at `version` (a lease on a row another replica has
    /// refreshed since it was read would present a consumed refresh token): replicas on one
    /// database never refresh the same credential at once. Renewing one's own lease is taking it
    /// again. The generation does not move: a lease is no token write.
    pub fn take_lease(
        &self,
        conn: &mut DbConn,
        version: CredentialVersion,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, DbError> {
        let free = tokens::lease_owner
            .is_null()
            .or(tokens::lease_expires_at.lt(now))
            .or(tokens::lease_owner.eq(owner));
        let changed = retry_lost_races(|| {
            diesel::update(
                tokens::table
                    .filter(tokens::id.eq(version.id))
                    .filter(tokens::generation.eq(version.generation))
                    .filter(free),
            )
            .set((
                tokens::lease_owner.eq(owner),
                tokens::lease_expires_at.eq(until),
            ))
            .execute(conn)
            .map_err(DbError::from)
        })?;
        Ok(changed == 1)
    }

    /// The owners of the refresh leases recorded now, on credentials and client tokens alike.
    pub fn lease_owners(&self, conn: &mut DbConn) -> Result<Vec<String>, DbError> {
        let mut owners: Vec<Option<String>> = tokens::table
            .filter(tokens::lease_owner.is_not_null())
            .select(tokens::lease_owner)
            .distinct()
            .load(conn)?;
        owners.extend(
            client_tokens::table
                .filter(client_tokens::lease_owner.is_not_null())
                .select(client_tokens::lease_owner)
                .distinct()
                .load::<Option<String>>(conn)?,
        );
        let mut owners: Vec<String> = owners.into_iter().flatten().collect();
        owners.sort();
        owners.dedup();
        Ok(owners)
    }

    /// Clears every lease of `owners` (processes that are gone); how many there were.
    pub fn void_leases(&self, conn: &mut DbConn, owners: &[String]) -> Result<usize, DbError> {
        let credentials = diesel::update(tokens::table.filter(tokens::lease_owner.eq_any(owners)))
            .set((
                tokens::lease_owner.eq(None::<String>),
                tokens::lease_expires_at.eq(None::<i64>),
            ))
            .execute(conn)?;
        let client =
            diesel::update(client_tokens::table.filter(client_tokens::lease_owner.eq_any(owners)))
                .set((
                    client_tokens::lease_owner.eq(None::<String>),
                    client_tokens::lease_expires_at.eq(None::<i64>),
                ))
                .execute(conn)?;
        Ok(credentials + client)
    }

    /// Gives a lease back (after a failed refresh; a stored one clears it itself).
    pub fn release_lease(&self, conn: &mut DbConn, id: i64, owner: &str) -> Result<(), DbError> {
        retry_lost_races(|| {
            diesel::update(
                tokens::table
                    .filter(tokens::id.eq(id))
                    .filter(tokens::lease_owner.eq(owner)),
            )
            .set((
                tokens::lease_owner.eq(None::<String>),
                tokens::lease_expires_at.eq(None::<i64>),
            ))
            .execute(conn)
            .map_err(DbError::from)
        })
        .map(|_| ())
    }

    /// The version of a credential, without decrypting anything: what cache hits check on
    /// databases several replicas share.
    pub fn credential_version(
        &self,
        conn: &mut DbConn,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<CredentialVersion>, DbError> {
        Ok(tokens::table
            .filter(tokens::user_id.eq(user_id))
            .filter(tokens::provider.eq(provider))
            .select((tokens::id, tokens::generation))
            .first::<(i64, i64)>(conn)
            .optional()?
            .map(|(id, generation)| CredentialVersion { id, generation }))
    }

    /// Marks a credential the IdP refused; compare-and-set like every token-path write.
    pub fn mark_needs_redelegation(
        &self,
        conn: &mut DbConn,
        expected: CredentialVersion,
        now: i64,
    ) -> Result<(), DbError> {
        let changed = retry_lost_races(|| {
            diesel::update(tokens::table)
                .filter(tokens::id.eq(expected.id))
                .filter(tokens::generation.eq(expected.generation))
                .set((
                    tokens::state.eq(CredentialState::NeedsRedelegation.as_str()),
                    tokens::generation.eq(expected.generation + 1),
                    tokens::updated_at.eq(now),
                ))
                .execute(conn)
                .map_err(DbError::from)
        })?;
        if changed == 0 {
            return Err(DbError::Conflict {
                expected: expected.generation,
            });
        }
        Ok(())
    }

    /// The credential of one user at one provider, whatever its state and expiry.
    pub fn credential(
        &self,
        conn: &mut DbConn,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<StoredToken>, DbError> {
        tokens::table
            .filter(tokens::user_id.eq(user_id))
            .filter(tokens::provider.eq(provider))
            .select(TokenRow::as_select())
            .first(conn)
            .optional()?
            .map(|row| self.decrypt(row))
            .transpose()
    }

    /// DIRAC's `getTokensByUserID`: every provider's row of the user, expired ones included.
    pub fn tokens_by_user_id(
        &self,
        conn: &mut DbConn,
        user_id: &str,
    ) -> Result<Vec<StoredToken>, DbError> {
        tokens::table
            .filter(tokens::user_id.eq(user_id))
            .order(tokens::provider.asc())
            .select(TokenRow::as_select())
            .load(conn)?
            .into_iter()
            .map(|row| self.decrypt(row))
            .collect()
    }

    /// DIRAC's `removeToken(user_id=…)`: all of the user's rows, for every provider.
    pub fn remove_tokens(&self, conn: &mut DbConn, user_id: &str) -> Result<usize, DbError> {
        retry_lost_races(|| {
            diesel::delete(tokens::table.filter(tokens::user_id.eq(user_id)))
                .execute(conn)
                .map_err(DbError::from)
        })
    }

    /// Deletes credentials whose *refresh* token has expired (DIRAC purges by access-token expiry
    /// and so loses valid refresh tokens).
    pub fn purge_expired(&self, conn: &mut DbConn, now: i64) -> Result<usize, DbError> {
        retry_lost_races(|| {
            diesel::delete(tokens::table.filter(tokens::rt_expires_at.lt(now)))
                .execute(conn)
                .map_err(DbError::from)
        })
    }

    /// Stored credentials by (provider, state), each with how many of them are usable (active,
    /// refresh token still valid at `now`) and expire before each of `before`. One pass over the
    /// index on (provider, state, rt_expires_at) answers it all: separate queries for the expiry
    /// windows read hundreds of thousands of rows each at a million credentials (4 s on MariaDB).
    pub fn count_credentials(
        &self,
        conn: &mut DbConn,
        now: i64,
        before: [i64; 2],
    ) -> Result<Vec<CredentialCount>, DbError> {
        use diesel::sql_types::BigInt;
        let expiring = |before: i64| {
            diesel::dsl::sql::<BigInt>(&format!(
                "COUNT(CASE WHEN state = '{}' AND rt_expires_at > ",
                CredentialState::Active.as_str()
            ))
            .bind::<BigInt, _>(now)
            .sql(" AND rt_expires_at <= ")
            .bind::<BigInt, _>(before)
            .sql(" THEN 1 END)")
        };
        let rows: Vec<(String, String, i64, i64, i64)> = tokens::table
            .group_by((tokens::provider, tokens::state))
            .select((
                tokens::provider,
                tokens::state,
                diesel::dsl::count_star(),
                expiring(before[0]),
                expiring(before[1]),
            ))
            .order((tokens::provider.asc(), tokens::state.asc()))
            .load(conn)?;
        Ok(rows
            .into_iter()
            .map(|(provider, state, stored, first, second)| CredentialCount {
                provider,
                state,
                stored,
                expiring: [first, second],
            })
            .collect())
    }

    /// Every stored credential for `export-dirac-tokendb`, in id order: the usable ones
    /// decrypted, the others with the reason they are left out. Only usable ones are decrypted, so
    /// a row that would be skipped anyway never counts as undecryptable.
    pub fn export_candidates(
        &self,
        conn: &mut DbConn,
        now: i64,
    ) -> Result<Vec<ExportCandidate>, DbError> {
        let rows: Vec<TokenRow> = tokens::table
            .order(tokens::id.asc())
            .select(TokenRow::as_select())
            .load(conn)?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let reason = if row.state != CredentialState::Active.as_str() {
                    ExportSkip::NeedsRedelegation
                } else if row.rt_expires_at <= now {
                    ExportSkip::Expired
                } else {
                    let (id, user_id, provider) =
                        (row.id, row.user_id.clone(), row.provider.clone());
                    return match self.decrypt(row) {
                        Ok(token) => ExportCandidate::Usable(Box::new(token)),
                        Err(e) => ExportCandidate::Skipped {
                            id,
                            user_id,
                            provider,
                            reason: ExportSkip::DoesNotDecrypt(e.to_string()),
                        },
                    };
                };
                ExportCandidate::Skipped {
                    id: row.id,
                    user_id: row.user_id,
                    provider: row.provider,
                    reason,
                }
            })
            .collect())
    }

    /// The version of every stored credential, by (user ID, provider), without decrypting:
    /// how `export-dirac-tokendb` sees whether a credential changed while it ran.
    pub fn credential_versions(
        &self,
        conn: &mut DbConn,
    ) -> Result<HashMap<CredentialPair, CredentialVersion>, DbError> {
        Ok(tokens::table
            .select((
                tokens::user_id,
                tokens::provider,
                tokens::id,
                tokens::generation,
            ))
            .load::<(String, String, i64, i64)>(conn)?
            .into_iter()
            .map(|(user_id, provider, id, generation)| {
                ((user_id, provider), CredentialVersion { id, generation })
            })
            .collect())
    }

    /// How many rows are sealed under a key other than the newest.
    pub fn rows_under_old_keys(&self, conn: &mut DbConn) -> Result<i64, DbError> {
        let newest = self.keyring.current().newest_key_id().to_owned();
        Ok(tokens::table
            .filter(tokens::key_id.ne(newest))
            .count()
            .get_result(conn)?)
    }

    /// One batch of `rotate-key`: re-seals under the newest key the first `limit` rows under an
    /// older key whose id is above `after` (keyset pagination: each batch costs the same, wherever
    /// it is in the table). The rows are read and re-sealed first, then written in one
    /// transaction, so that a batch costs one commit and holds its locks only for its writes.
    /// Each row is written only if neither its generation nor its key changed since it was read:
    /// a concurrent token write always wins, and the row is left for a later sweep. Nothing is
    /// announced: a re-seal changes no credential.
    pub fn reencrypt_batch(
        &self,
        conn: &mut DbConn,
        after: i64,
        limit: i64,
    ) -> Result<ReencryptBatch, DbError> {
        let keyring = self.keyring.current();
        let newest = keyring.newest_key_id().to_owned();
        let rows: Vec<TokenRow> = tokens::table
            .filter(tokens::id.gt(after))
            .filter(tokens::key_id.ne(&newest))
            .order(tokens::id.asc())
            .limit(limit)
            .select(TokenRow::as_select())
            .load(conn)?;
        let last_id = rows.last().map(|row| row.id);
        let mut resealed: Resealed = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, generation, old_key) = (row.id, row.generation, row.key_id.clone());
            let plain = self.decrypt(row)?;
            let sealed = Sealed::new(
                &keyring,
                &plain.user_id,
                &plain.provider,
                &plain.refresh_token,
                plain.access_token.as_ref(),
            );
            resealed.push((id, generation, old_key, sealed));
        }
        // Binds a batch's rows, then the new key, to a re-seal query ([`reseal_statement`]) and
        // runs it.
        #[cfg(any(feature = "postgres", feature = "mysql"))]
        macro_rules! run_reseal {
            ($conn:expr, $backend:ty, $sql:expr, $resealed:expr, $new_key:expr) => {{
                use diesel::sql_types::{BigInt, Binary, Nullable, Text};
                let mut query = diesel::sql_query($sql).into_boxed::<$backend>();
                for (id, generation, old_key, sealed) in $resealed {
                    query = query
                        .bind::<BigInt, _>(*id)
                        .bind::<BigInt, _>(*generation)
                        .bind::<Text, _>(old_key.as_str())
                        .bind::<Binary, _>(sealed.refresh_token.as_slice())
                        .bind::<Nullable<Binary>, _>(sealed.access_token.as_deref());
                }
                query.bind::<Text, _>($new_key).execute($conn)
            }};
        }
        let started = std::time::Instant::now();
        let rewritten = retry_lost_races(|| {
            conn.transaction(|conn| match conn {
                _ if resealed.is_empty() => Ok(0),
                // One statement for the batch: a round trip per row would bound the rate to a few
                // thousand rows a second.
                #[cfg(feature = "postgres")]
                DbConn::Postgres(conn) => {
                    let sql = reseal_statement::postgres(resealed.len());
                    Ok(run_reseal!(
                        conn,
                        diesel::pg::Pg,
                        sql,
                        &resealed,
                        newest.as_str()
                    )?)
                }
                #[cfg(feature = "mysql")]
                DbConn::Mysql(conn) => {
                    let sql = reseal_statement::mysql(resealed.len());
                    Ok(run_reseal!(
                        conn,
                        diesel::mysql::Mysql,
                        sql,
                        &resealed,
                        newest.as_str()
                    )?)
                }
                // In-process: a statement per row costs no round trip.
                #[cfg(feature = "sqlite")]
                DbConn::Sqlite(_) => {
                    let mut rewritten = 0;
                    for (id, generation, old_key, sealed) in &resealed {
                        rewritten += diesel::update(tokens::table)
                            .filter(tokens::id.eq(id))
                            .filter(tokens::generation.eq(generation))
                            .filter(tokens::key_id.eq(old_key))
                            .set((
                                tokens::key_id.eq(&sealed.key_id),
                                tokens::refresh_token.eq(&sealed.refresh_token),
                                tokens::access_token.eq(sealed.access_token.as_deref()),
                            ))
                            .execute(conn)?;
                    }
                    Ok(rewritten)
                }
            })
        })?;
        Ok(ReencryptBatch {
            rewritten,
            conflicts: resealed.len() - rewritten,
            last_id,
            transaction: started.elapsed(),
        })
    }

    fn decrypt(&self, row: TokenRow) -> Result<StoredToken, DbError> {
        let keyring = self.keyring.with_key(&row.key_id)?;
        let context = |column| SealContext {
            user_id: &row.user_id,
            provider: &row.provider,
            column,
        };
        let refresh_token = keyring.open(
            &row.key_id,
            context(TokenColumn::RefreshToken),
            &row.refresh_token,
        )?;
        let access_token = row
            .access_token
            .as_deref()
            .map(|sealed| keyring.open(&row.key_id, context(TokenColumn::AccessToken), sealed))
            .transpose()?;
        let state = CredentialState::parse(&row.state)
            .ok_or_else(|| DbError::BadState(row.state.clone()))?;
        Ok(StoredToken {
            id: row.id,
            user_id: row.user_id,
            provider: row.provider,
            state,
            generation: row.generation,
            key_id: row.key_id,
            refresh_token,
            rt_expires_at: row.rt_expires_at,
            access_token,
            expires_at: row.expires_at,
            expires_in: row.expires_in,
            token_type: row.token_type,
            scope: row.scope,
            audience: row.audience,
            client_id: row.client_id,
            issued_at: row.issued_at,
            access_token_revoked_at: row.access_token_revoked_at,
            refresh_token_revoked_at: row.refresh_token_revoked_at,
            lease_owner: row.lease_owner,
            lease_expires_at: row.lease_expires_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            grant_scope: row.grant_scope,
        })
    }
}

/// A batch of re-sealed rows: (id, generation read, key read, new ciphertexts).
type Resealed = Vec<(i64, i64, String, Sealed)>;

/// The rows of a re-seal batch as one UPDATE joined on (id, generation, key), so that each row is
/// still written only if it is as it was read.
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod reseal_statement {
    /// Numbered placeholders: the rows' five each, then the new key.
    #[cfg(feature = "postgres")]
    pub(super) fn postgres(rows: usize) -> String {
        let values: Vec<String> = (0..rows)
            .map(|i| {
                let n = 5 * i;
                format!(
                    "(${}::bigint, ${}::bigint, ${}::text, ${}::bytea, ${}::bytea)",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5
                )
            })
            .collect();
        format!(
            "UPDATE tokens AS t SET key_id = ${}, refresh_token = v.refresh_token, \
             access_token = v.access_token FROM (VALUES {}) AS v(id, generation, old_key, \
             refresh_token, access_token) WHERE t.id = v.id AND t.generation = v.generation \
             AND t.key_id = v.old_key",
            5 * rows + 1,
            values.join(", ")
        )
    }

    /// A derived table (MariaDB's VALUES cannot name its columns); placeholders in text order:
    /// the rows', then the new key.
    #[cfg(feature = "mysql")]
    pub(super) fn mysql(rows: usize) -> String {
        let first = "SELECT ? AS id, ? AS generation, ? AS old_key, ? AS refresh_token, \
                     ? AS access_token";
        let rest = " UNION ALL SELECT ?, ?, ?, ?, ?".repeat(rows.saturating_sub(1));
        format!(
            "UPDATE tokens AS t JOIN ({first}{rest}) AS v ON t.id = v.id \
             AND t.generation = v.generation AND t.key_id = v.old_key SET t.key_id = ?, \
             t.refresh_token = v.refresh_token, t.access_token = v.access_token"
        )
    }
}

/// A row's two ciphertexts, both under the key the row records.
struct Sealed {
    key_id: String,
    refresh_token: Vec<u8>,
    access_token: Option<Vec<u8>>,
}

impl Sealed {
    fn of(keyring: &Keyring, token: &NewToken) -> Self {
        Self::new(
            keyring,
            &token.user_id,
            &token.provider,
            &token.refresh_token,
            token.access_token.as_ref(),
        )
    }

    fn new(
        keyring: &Keyring,
        user_id: &str,
        provider: &str,
        refresh_token: &Secret,
        access_token: Option<&Secret>,
    ) -> Self {
        let context = |column| SealContext {
            user_id,
            provider,
            column,
        };
        let (key_id, refresh_token) =
            keyring.seal(context(TokenColumn::RefreshToken), refresh_token);
        let access_token = access_token.map(|token| {
            keyring
                .seal_with_key(&key_id, context(TokenColumn::AccessToken), token)
                .expect("the key that just sealed is in the keyring")
        });
        Self {
            key_id,
            refresh_token,
            access_token,
        }
    }
}

/// Runs `attempt` again when it lost a race that a retry resolves; any other error is returned.
pub(super) fn retry_lost_races<T>(
    mut attempt: impl FnMut() -> Result<T, DbError>,
) -> Result<T, DbError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt() {
            Err(e) if tries < WRITE_ATTEMPTS && lost_a_race(&e) => {
                std::thread::sleep(Duration::from_millis((2 << tries).min(2000)));
            }
            other => return other,
        }
    }
}

fn lost_a_race(error: &DbError) -> bool {
    match error {
        DbError::Conflict { .. } => true,
        DbError::Query(DieselError::DatabaseError(kind, info)) => {
            matches!(
                kind,
                DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::SerializationFailure
            ) || info.message().contains("Deadlock")
                || info.message().contains("database is locked")
        }
        _ => false,
    }
}
