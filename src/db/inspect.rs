//! What the operator's `tokens` commands read and change: the stored credentials' columns
//! without their ciphertexts (listing decrypts nothing), one credential with its tokens opened
//! on request, the deletion of one credential at the version that was read, and the check that
//! every stored ciphertext, of credentials and of client tokens, opens with the keyring.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::schema::{client_tokens, tokens};
use super::store::retry_lost_races;
use super::{CredentialVersion, DbConn, DbError, TokenStore};
use crate::crypto::{Keyring, SealContext, TokenColumn};
use crate::domain::Secret;

/// Every column of a stored credential but its two ciphertexts.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = tokens)]
pub struct CredentialRecord {
    pub id: i64,
    pub user_id: String,
    pub provider: String,
    /// As stored: `active` or `needs_redelegation`.
    pub state: String,
    pub generation: i64,
    pub key_id: String,
    pub rt_expires_at: i64,
    #[diesel(select_expression = tokens::access_token.is_not_null())]
    #[diesel(select_expression_type = diesel::dsl::IsNotNull<tokens::access_token>)]
    pub has_access_token: bool,
    pub expires_at: i64,
    pub expires_in: i64,
    pub token_type: Option<String>,
    pub scope: String,
    pub grant_scope: String,
    pub audience: Option<String>,
    pub client_id: Option<String>,
    pub issued_at: i64,
    pub access_token_revoked_at: i64,
    pub refresh_token_revoked_at: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub import_generation: Option<i64>,
}

impl CredentialRecord {
    pub fn version(&self) -> CredentialVersion {
        CredentialVersion {
            id: self.id,
            generation: self.generation,
        }
    }
}

/// Which credentials [`TokenStore::list_credentials`] reads; `None` matches all.
#[derive(Clone, Debug, Default)]
pub struct CredentialFilter {
    pub user_id: Option<String>,
    pub provider: Option<String>,
    /// A stored state (`active`, `needs_redelegation`).
    pub state: Option<String>,
    /// Refresh tokens that expire in `(from, until]` (Unix seconds).
    pub rt_expires_within: Option<(i64, i64)>,
}

/// A credential's two tokens, opened.
#[derive(Clone, Debug)]
pub struct OpenedTokens {
    pub refresh_token: Secret,
    pub access_token: Option<Secret>,
}

/// Which value of a credential does not open, and why (never the value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotOpened {
    /// `refresh_token` or `access_token`.
    pub column: &'static str,
    pub reason: String,
}

/// A credential, and when asked the outcome of opening its tokens.
pub type RecordAndTokens = (CredentialRecord, Option<Result<OpenedTokens, NotOpened>>);

/// A credential's row as `verify` reads it: id, user ID, provider, key id, the two ciphertexts.
type SealedCredential = (i64, String, String, String, Vec<u8>, Option<Vec<u8>>);
/// A client token's row as `verify` reads it: id, token key, provider, key id, ciphertext.
type SealedClientToken = (i64, String, String, Option<String>, Option<Vec<u8>>);

/// A stored ciphertext that does not open: where, and why (never the value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealFailure {
    /// `tokens` or `client_tokens`.
    pub table: &'static str,
    pub id: i64,
    /// The user ID; for a client token, its token key.
    pub subject: String,
    pub provider: String,
    pub key_id: String,
    /// `refresh_token` or `access_token`.
    pub column: &'static str,
    pub reason: String,
}

/// What one batch of [`TokenStore::verify_credentials`] or [`TokenStore::verify_client_tokens`]
/// found.
#[derive(Clone, Debug, Default)]
pub struct VerifyBatch {
    /// The highest id read: where the next batch starts. `None`: no row beyond.
    pub last_id: Option<i64>,
    /// Rows read.
    pub rows: usize,
    /// Rows whose ciphertexts all open, by key id.
    pub opened: BTreeMap<String, usize>,
    /// Rows with a ciphertext that does not open, by key id.
    pub failed: BTreeMap<String, usize>,
    /// Client-token rows that hold no token yet (nothing sealed).
    pub empty: usize,
    /// Each ciphertext that does not open.
    pub failures: Vec<SealFailure>,
}

impl VerifyBatch {
    fn count(&mut self, key_id: &str, failures: Vec<SealFailure>) {
        let counts = if failures.is_empty() {
            &mut self.opened
        } else {
            &mut self.failed
        };
        *counts.entry(key_id.to_owned()).or_default() += 1;
        self.failures.extend(failures);
    }
}

impl TokenStore {
    /// Up to `limit` credentials matching `filter` whose id is above `after`, by ascending id
    /// (keyset pagination); nothing is decrypted.
    pub fn list_credentials(
        &self,
        conn: &mut DbConn,
        filter: &CredentialFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<CredentialRecord>, DbError> {
        let mut query = tokens::table
            .filter(tokens::id.gt(after))
            .select(CredentialRecord::as_select())
            .order(tokens::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(user_id) = &filter.user_id {
            query = query.filter(tokens::user_id.eq(user_id));
        }
        if let Some(provider) = &filter.provider {
            query = query.filter(tokens::provider.eq(provider));
        }
        if let Some(state) = &filter.state {
            query = query.filter(tokens::state.eq(state));
        }
        if let Some((from, until)) = filter.rt_expires_within {
            query = query
                .filter(tokens::rt_expires_at.gt(from))
                .filter(tokens::rt_expires_at.le(until));
        }
        Ok(query.load(conn)?)
    }

    /// The credential of one user at one provider, every column; with `open`, its tokens too,
    /// or why they do not open.
    pub fn credential_record(
        &self,
        conn: &mut DbConn,
        user_id: &str,
        provider: &str,
        open: bool,
    ) -> Result<Option<RecordAndTokens>, DbError> {
        let found: Option<(CredentialRecord, Vec<u8>, Option<Vec<u8>>)> = tokens::table
            .filter(tokens::user_id.eq(user_id))
            .filter(tokens::provider.eq(provider))
            .select((
                CredentialRecord::as_select(),
                tokens::refresh_token,
                tokens::access_token,
            ))
            .first(conn)
            .optional()?;
        Ok(found.map(|(record, refresh_token, access_token)| {
            let opened = open.then(|| {
                let keyring = self.keyring.current();
                open_credential(&keyring, &record, &refresh_token, access_token.as_deref())
            });
            (record, opened)
        }))
    }

    /// Deletes a credential if it is still at `version` (a concurrent token write wins, and the
    /// caller reads it again); whether it did. The database announces the deletion to every
    /// replica (the change feed).
    pub fn delete_credential(
        &self,
        conn: &mut DbConn,
        version: CredentialVersion,
    ) -> Result<bool, DbError> {
        let deleted = retry_lost_races(|| {
            diesel::delete(
                tokens::table
                    .filter(tokens::id.eq(version.id))
                    .filter(tokens::generation.eq(version.generation)),
            )
            .execute(conn)
            .map_err(DbError::from)
        })?;
        Ok(deleted == 1)
    }

    /// Opens the ciphertexts of up to `limit` credentials whose id is above `after`, with the
    /// keyring as it is (no reload: a key missing from the file is what this looks for).
    pub fn verify_credentials(
        &self,
        conn: &mut DbConn,
        after: i64,
        limit: i64,
    ) -> Result<VerifyBatch, DbError> {
        let rows: Vec<SealedCredential> = tokens::table
            .filter(tokens::id.gt(after))
            .order(tokens::id.asc())
            .limit(limit)
            .select((
                tokens::id,
                tokens::user_id,
                tokens::provider,
                tokens::key_id,
                tokens::refresh_token,
                tokens::access_token,
            ))
            .load(conn)?;
        let keyring = self.keyring.current();
        let mut batch = VerifyBatch {
            last_id: rows.last().map(|row| row.0),
            rows: rows.len(),
            ..Default::default()
        };
        for (id, user_id, provider, key_id, refresh_token, access_token) in rows {
            let failure = |column: TokenColumn, reason: String| SealFailure {
                table: "tokens",
                id,
                subject: user_id.clone(),
                provider: provider.clone(),
                key_id: key_id.clone(),
                column: column.label(),
                reason,
            };
            let context = |column| SealContext {
                user_id: &user_id,
                provider: &provider,
                column,
            };
            let mut failures = Vec::new();
            let columns = [
                (TokenColumn::RefreshToken, Some(refresh_token)),
                (TokenColumn::AccessToken, access_token),
            ];
            for (column, sealed) in columns {
                if let Some(sealed) = sealed
                    && let Err(error) = keyring.open(&key_id, context(column), &sealed)
                {
                    failures.push(failure(column, error.to_string()));
                }
            }
            batch.count(&key_id, failures);
        }
        Ok(batch)
    }

    /// [`TokenStore::verify_credentials`] for the shared client tokens.
    pub fn verify_client_tokens(
        &self,
        conn: &mut DbConn,
        after: i64,
        limit: i64,
    ) -> Result<VerifyBatch, DbError> {
        let rows: Vec<SealedClientToken> = client_tokens::table
            .filter(client_tokens::id.gt(after))
            .order(client_tokens::id.asc())
            .limit(limit)
            .select((
                client_tokens::id,
                client_tokens::token_key,
                client_tokens::provider,
                client_tokens::key_id,
                client_tokens::access_token,
            ))
            .load(conn)?;
        let keyring = self.keyring.current();
        let mut batch = VerifyBatch {
            last_id: rows.last().map(|row| row.0),
            rows: rows.len(),
            ..Default::default()
        };
        for (id, token_key, provider, key_id, access_token) in rows {
            let (key_id, sealed) = match (key_id, access_token) {
                (Some(key_id), Some(sealed)) => (key_id, sealed),
                (None, None) => {
                    batch.empty += 1;
                    continue;
                }
                (key_id, _) => {
                    let key_id = key_id.unwrap_or_default();
                    let failure = SealFailure {
                        table: "client_tokens",
                        id,
                        subject: token_key,
                        provider,
                        key_id: key_id.clone(),
                        column: TokenColumn::AccessToken.label(),
                        reason: "the row has a key id without a token, or a token without a key id"
                            .into(),
                    };
                    batch.count(&key_id, vec![failure]);
                    continue;
                }
            };
            let subject = super::client_tokens::subject(&token_key);
            let context = SealContext {
                user_id: &subject,
                provider: &provider,
                column: TokenColumn::AccessToken,
            };
            let failures = match keyring.open(&key_id, context, &sealed) {
                Ok(_) => Vec::new(),
                Err(error) => vec![SealFailure {
                    table: "client_tokens",
                    id,
                    subject: token_key,
                    provider,
                    key_id: key_id.clone(),
                    column: TokenColumn::AccessToken.label(),
                    reason: error.to_string(),
                }],
            };
            batch.count(&key_id, failures);
        }
        Ok(batch)
    }
}

/// Opens a credential's ciphertexts with `keyring`; the first that does not open is the failure.
fn open_credential(
    keyring: &Keyring,
    record: &CredentialRecord,
    refresh_token: &[u8],
    access_token: Option<&[u8]>,
) -> Result<OpenedTokens, NotOpened> {
    let open = |column: TokenColumn, sealed: &[u8]| {
        let context = SealContext {
            user_id: &record.user_id,
            provider: &record.provider,
            column,
        };
        keyring
            .open(&record.key_id, context, sealed)
            .map_err(|error| NotOpened {
                column: column.label(),
                reason: error.to_string(),
            })
    };
    Ok(OpenedTokens {
        refresh_token: open(TokenColumn::RefreshToken, refresh_token)?,
        access_token: access_token
            .map(|sealed| open(TokenColumn::AccessToken, sealed))
            .transpose()?,
    })
}
