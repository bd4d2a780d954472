//! DIRAC's own access tokens (client_credentials), shared by replicas on one database: a row per
//! token key with a lease, so that one replica at a time asks the IdP and the others serve what it
//! stored. On SQLite (one process) the refresh actors suffice and this table stays empty.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::schema::client_tokens;
use super::store::retry_lost_races;
use super::{CredentialVersion, DbConn, DbError, TokenStore};
use crate::crypto::{SealContext, TokenColumn};
use crate::domain::Secret;

/// A client token's row, its access token decrypted.
#[derive(Clone, Debug)]
pub struct StoredClientToken {
    pub version: CredentialVersion,
    pub access_token: Option<Secret>,
    pub token_type: Option<String>,
    pub expires_at: i64,
    pub expires_in: i64,
    /// The scopes the IdP granted (space-separated).
    pub scope: String,
}

/// What the token key is made of; `token_key` is its digest, the row's unique key.
#[derive(Clone, Debug)]
pub struct ClientTokenKey {
    pub token_key: String,
    pub provider: String,
    pub scope: String,
    pub audience: Option<String>,
}

#[derive(Queryable)]
struct Row {
    id: i64,
    generation: i64,
    key_id: Option<String>,
    access_token: Option<Vec<u8>>,
    token_type: Option<String>,
    expires_at: i64,
    expires_in: i64,
    scope: String,
}

fn context<'a>(subject: &'a str, provider: &'a str) -> SealContext<'a> {
    SealContext {
        user_id: subject,
        provider,
        column: TokenColumn::AccessToken,
    }
}

/// The ciphertext is bound to its token key, so it cannot serve another key's requests.
pub(super) fn subject(token_key: &str) -> String {
    format!("client:{token_key}")
}

impl TokenStore {
    /// The row of a client-token key, created empty on first use.
    pub fn client_token(
        &self,
        conn: &mut DbConn,
        key: &ClientTokenKey,
        now: i64,
    ) -> Result<StoredClientToken, DbError> {
        let select = |conn: &mut DbConn| {
            client_tokens::table
                .filter(client_tokens::token_key.eq(&key.token_key))
                .select((
                    client_tokens::id,
                    client_tokens::generation,
                    client_tokens::key_id,
                    client_tokens::access_token,
                    client_tokens::token_type,
                    client_tokens::expires_at,
                    client_tokens::expires_in,
                    client_tokens::scope,
                ))
                .first::<Row>(conn)
                .optional()
        };
        let row = match select(conn)? {
            Some(row) => row,
            None => {
                let inserted = diesel::insert_into(client_tokens::table)
                    .values((
                        client_tokens::token_key.eq(&key.token_key),
                        client_tokens::provider.eq(&key.provider),
                        client_tokens::scope.eq(&key.scope),
                        client_tokens::audience.eq(key.audience.as_deref()),
                        client_tokens::generation.eq(1_i64),
                        client_tokens::updated_at.eq(now),
                    ))
                    .execute(conn);
                match inserted {
                    // Another replica created it first.
                    Ok(_)
                    | Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {}
                    Err(other) => return Err(other.into()),
                }
                select(conn)?.ok_or(DbError::Conflict { expected: 1 })?
            }
        };
        let access_token = match (&row.key_id, &row.access_token) {
            (Some(key_id), Some(sealed)) => {
                let keyring = self.keyring.with_key(key_id)?;
                Some(keyring.open(
                    key_id,
                    context(&subject(&key.token_key), &key.provider),
                    sealed,
                )?)
            }
            _ => None,
        };
        Ok(StoredClientToken {
            version: CredentialVersion {
                id: row.id,
                generation: row.generation,
            },
            access_token,
            token_type: row.token_type,
            expires_at: row.expires_at,
            expires_in: row.expires_in,
            scope: row.scope,
        })
    }

    /// The lease of a client-token row, as `take_lease` for credentials.
    pub fn take_client_lease(
        &self,
        conn: &mut DbConn,
        version: CredentialVersion,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, DbError> {
        let free = client_tokens::lease_owner
            .is_null()
            .or(client_tokens::lease_expires_at.lt(now))
            .or(client_tokens::lease_owner.eq(owner));
        let changed = retry_lost_races(|| {
            diesel::update(
                client_tokens::table
                    .filter(client_tokens::id.eq(version.id))
                    .filter(client_tokens::generation.eq(version.generation))
                    .filter(free),
            )
            .set((
                client_tokens::lease_owner.eq(owner),
                client_tokens::lease_expires_at.eq(until),
            ))
            .execute(conn)
            .map_err(DbError::from)
        })?;
        Ok(changed == 1)
    }

    pub fn release_client_lease(
        &self,
        conn: &mut DbConn,
        id: i64,
        owner: &str,
    ) -> Result<(), DbError> {
        retry_lost_races(|| {
            diesel::update(
                client_tokens::table
                    .filter(client_tokens::id.eq(id))
                    .filter(client_tokens::lease_owner.eq(owner)),
            )
            .set((
                client_tokens::lease_owner.eq(None::<String>),
                client_tokens::lease_expires_at.eq(None::<i64>),
            ))
            .execute(conn)
            .map_err(DbError::from)
        })
        .map(|_| ())
    }

    /// Stores a new client token, compare-and-set on the generation; ends the lease.
    #[expect(
        clippy::too_many_arguments,
        reason = "each argument is one column of the stored row"
    )]
    pub fn store_client_token(
        &self,
        conn: &mut DbConn,
        key: &ClientTokenKey,
        expected: CredentialVersion,
        access_token: &Secret,
        token_type: &str,
        expires_at: i64,
        expires_in: i64,
        granted_scope: &str,
        now: i64,
    ) -> Result<CredentialVersion, DbError> {
        let keyring = self.keyring.current();
        let (key_id, sealed) = keyring.seal(
            context(&subject(&key.token_key), &key.provider),
            access_token,
        );
        let changed = retry_lost_races(|| {
            diesel::update(
                client_tokens::table
                    .filter(client_tokens::id.eq(expected.id))
                    .filter(client_tokens::generation.eq(expected.generation)),
            )
            .set((
                client_tokens::generation.eq(expected.generation + 1),
                client_tokens::key_id.eq(&key_id),
                client_tokens::access_token.eq(&sealed),
                client_tokens::token_type.eq(token_type),
                client_tokens::expires_at.eq(expires_at),
                client_tokens::expires_in.eq(expires_in),
                client_tokens::scope.eq(granted_scope),
                client_tokens::updated_at.eq(now),
                client_tokens::lease_owner.eq(None::<String>),
                client_tokens::lease_expires_at.eq(None::<i64>),
            ))
            .execute(conn)
            .map_err(DbError::from)
        })?;
        if changed == 0 {
            return Err(DbError::Conflict {
                expected: expected.generation,
            });
        }
        Ok(CredentialVersion {
            id: expected.id,
            generation: expected.generation + 1,
        })
    }
}
