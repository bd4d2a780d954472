//! What the lease protocol needs from storage and from the IdP, as two small traits: the service
//! passes its [`Database`] and [`IdpClient`], the protocol's unit tests pass fakes.

use std::time::Duration;

use super::AccessToken;
use crate::actors::db::{Database, DbOperation};
use crate::db::{
    ClientTokenKey, CredentialVersion, DbError, LeasedRow, StoredClientToken, StoredToken,
    TokenUpdate,
};
use crate::domain::scopes::ScopeSet;
use crate::domain::{Secret, unix_now};
use crate::idp::{AudienceNarrowing, IdpClient, IdpError, IssuedToken};

/// The stored credentials and the shared client-token rows, with their leases.
pub(super) trait CredentialStore {
    /// The clock that stored expiries and leases are compared with, in Unix seconds.
    fn now(&self) -> i64 {
        unix_now()
    }

    /// The clock leases are taken with and compared with, in Unix seconds.
    fn lease_now(&self) -> i64 {
        self.now()
    }

    /// The owner of the lease on `row`, if that replica is gone.
    async fn dead_lease_holder(&self, row: LeasedRow) -> Result<Option<String>, DbError>;

    /// The credential of one user at one provider, whatever its state and expiry.
    async fn credential(
        &self,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<StoredToken>, DbError>;

    /// Takes (or renews) a credential's refresh lease until `until`; false if another owner holds
    /// a live one or the credential is no longer at `version`.
    async fn take_lease(
        &self,
        version: CredentialVersion,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, DbError>;

    async fn release_lease(&self, id: i64, owner: &str) -> Result<(), DbError>;

    /// Writes a refresh's result if the credential is still at `expected`, ending the lease;
    /// returns the row as written.
    async fn store_refreshed(
        &self,
        expected: CredentialVersion,
        user_id: &str,
        provider: &str,
        update: TokenUpdate,
        now: i64,
    ) -> Result<StoredToken, DbError>;

    /// Marks a credential whose refresh token must not be presented again, if it is still at
    /// `expected`.
    async fn mark_needs_redelegation(
        &self,
        expected: CredentialVersion,
        now: i64,
    ) -> Result<(), DbError>;

    /// The shared row of a client-token key, created on first use.
    async fn client_token(
        &self,
        key: &ClientTokenKey,
        now: i64,
    ) -> Result<StoredClientToken, DbError>;

    async fn take_client_lease(
        &self,
        version: CredentialVersion,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, DbError>;

    async fn release_client_lease(&self, id: i64, owner: &str) -> Result<(), DbError>;

    /// Shares a client token if its row is still at `expected`, ending the lease.
    async fn store_client_token(
        &self,
        key: &ClientTokenKey,
        expected: CredentialVersion,
        token: &AccessToken,
        now: i64,
    ) -> Result<CredentialVersion, DbError>;
}

/// The identity provider's token endpoint.
pub(super) trait TokenIssuer {
    /// How long callers wait for an exchange (the IdP's `timeout`).
    fn timeout(&self) -> Duration;

    /// How long a refresh may take in all, its late reply included.
    fn refresh_timeout(&self) -> Duration;

    /// Whether a user token's audience is had by exchange (`audience_narrowing = exchange`)
    /// rather than sent with the refresh token.
    fn narrows_audiences_by_exchange(&self) -> bool;

    async fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<IssuedToken, IdpError>;

    async fn client_credentials(
        &self,
        scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<IssuedToken, IdpError>;

    /// An RFC 8693 exchange of an access token for one narrowed to `audience` and `scopes`.
    async fn token_exchange(
        &self,
        subject_token: &Secret,
        scopes: &ScopeSet,
        audience: &str,
    ) -> Result<IssuedToken, IdpError>;
}

impl CredentialStore for Database {
    fn lease_now(&self) -> i64 {
        self.clock_now()
    }

    async fn dead_lease_holder(&self, row: LeasedRow) -> Result<Option<String>, DbError> {
        self.run(DbOperation::DeadLeaseHolder, move |_, conn| {
            crate::db::dead_lease_holder(conn, row)
        })
        .await
    }

    async fn credential(
        &self,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<StoredToken>, DbError> {
        let (user_id, provider) = (user_id.to_owned(), provider.to_owned());
        self.run(DbOperation::Credential, move |store, conn| {
            store.credential(conn, &user_id, &provider)
        })
        .await
    }

    async fn take_lease(
        &self,
        version: CredentialVersion,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, DbError> {
        let owner = owner.to_owned();
        self.run(DbOperation::TakeLease, move |store, conn| {
            store.take_lease(conn, version, &owner, now, until)
        })
        .await
    }

    async fn release_lease(&self, id: i64, owner: &str) -> Result<(), DbError> {
        let owner = owner.to_owned();
        self.run(DbOperation::ReleaseLease, move |store, conn| {
            store.release_lease(conn, id, &owner)
        })
        .await
    }

    async fn store_refreshed(
        &self,
        expected: CredentialVersion,
        user_id: &str,
        provider: &str,
        update: TokenUpdate,
        now: i64,
    ) -> Result<StoredToken, DbError> {
        let (user_id, provider) = (user_id.to_owned(), provider.to_owned());
        self.run(DbOperation::StoreRefreshed, move |store, conn| {
            store.store_refreshed(conn, expected, &user_id, &provider, &update, now)
        })
        .await
    }

    async fn mark_needs_redelegation(
        &self,
        expected: CredentialVersion,
        now: i64,
    ) -> Result<(), DbError> {
        self.run(DbOperation::MarkNeedsRedelegation, move |store, conn| {
            store.mark_needs_redelegation(conn, expected, now)
        })
        .await
    }

    async fn client_token(
        &self,
        key: &ClientTokenKey,
        now: i64,
    ) -> Result<StoredClientToken, DbError> {
        let key = key.clone();
        self.run(DbOperation::ClientToken, move |store, conn| {
            store.client_token(conn, &key, now)
        })
        .await
    }

    async fn take_client_lease(
        &self,
        version: CredentialVersion,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, DbError> {
        let owner = owner.to_owned();
        self.run(DbOperation::TakeClientLease, move |store, conn| {
            store.take_client_lease(conn, version, &owner, now, until)
        })
        .await
    }

    async fn release_client_lease(&self, id: i64, owner: &str) -> Result<(), DbError> {
        let owner = owner.to_owned();
        self.run(DbOperation::ReleaseClientLease, move |store, conn| {
            store.release_client_lease(conn, id, &owner)
        })
        .await
    }

    async fn store_client_token(
        &self,
        key: &ClientTokenKey,
        expected: CredentialVersion,
        token: &AccessToken,
        now: i64,
    ) -> Result<CredentialVersion, DbError> {
        let key = key.clone();
        let (access_token, token_type) = (token.access_token.clone(), token.token_type.clone());
        let (expires_at, expires_in) = (token.expires_at, token.lifetime);
        let granted_scope = token.scope.to_string();
        self.run(DbOperation::StoreClientToken, move |store, conn| {
            store.store_client_token(
                conn,
                &key,
                expected,
                &access_token,
                &token_type,
                expires_at,
                expires_in,
                &granted_scope,
                now,
            )
        })
        .await
    }
}

impl TokenIssuer for IdpClient {
    fn timeout(&self) -> Duration {
        self.options().timeout
    }

    fn refresh_timeout(&self) -> Duration {
        self.options().refresh_timeout()
    }

    fn narrows_audiences_by_exchange(&self) -> bool {
        self.options().audience_narrowing == AudienceNarrowing::Exchange
    }

    async fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<IssuedToken, IdpError> {
        IdpClient::refresh(self, refresh_token, scopes, audience).await
    }

    async fn client_credentials(
        &self,
        scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<IssuedToken, IdpError> {
        IdpClient::client_credentials(self, scopes, audience).await
    }

    async fn token_exchange(
        &self,
        subject_token: &Secret,
        scopes: &ScopeSet,
        audience: &str,
    ) -> Result<IssuedToken, IdpError> {
        IdpClient::token_exchange(self, subject_token, scopes, audience).await
    }
}
