//! The cross-replica lease protocol. A user credential is refreshed under its row's lease and the
//! (rotated) refresh token stored, compare-and-set on the row's generation, before the access
//! token is handed out: IdPs that rotate refresh tokens revoke the whole grant when a used one is
//! presented again. DIRAC's own client tokens go through a shared row the same way.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use super::cache::refresh_jitter;
use super::seams::{CredentialStore, TokenIssuer};
use super::sync::UNCONFIRMED;
use super::{AccessToken, TokenError, TokenKey};
use crate::actors::audit::AuditTrail;
use crate::db::{ClientTokenKey, CredentialVersion, LeasedRow, StoredToken, TokenUpdate};
use crate::domain::CredentialState;
use crate::domain::audit::{AuditKind, AuditRecord, Origin, Protocol};
use crate::domain::scopes::ScopeSet;
use crate::idp::{IdpError, IssuedToken};
use crate::metrics::Metrics;

/// How long a caller waits for a token from a key's actor: the IdP's `timeout`, and a second
/// for storing what a refresh obtained just before it. A refresh that outlasts it is late.
pub(super) fn caller_deadline(issuer: &impl TokenIssuer) -> Duration {
    issuer.timeout() + Duration::from_secs(1)
}

/// This process as a party to the lease protocol: the owner its leases carry, and where it counts
/// the IdP calls the protocol saved and the refreshed tokens it could not store.
pub(super) struct Replica<'a> {
    pub(super) lease_owner: &'a str,
    pub(super) metrics: &'a Metrics,
    /// Where a rotation or a credential marked for a new login is recorded.
    pub(super) audit: Option<&'a AuditTrail>,
}

impl Replica<'_> {
    fn audit(&self, kind: AuditKind, stored: &StoredToken, outcome: &str, detail: String) {
        if let Some(audit) = self.audit {
            audit.record(AuditRecord {
                kind,
                outcome: outcome.to_owned(),
                user_id: Some(stored.user_id.clone()),
                provider: Some(stored.provider.clone()),
                client_id: stored.client_id.clone(),
                protocol: Protocol::Service,
                detail: Some(detail),
                ..AuditRecord::default()
            });
        }
    }
}

/// How often a replica that meets another's live lease looks at the row again.
const LEASE_POLL: Duration = Duration::from_millis(50);
/// How often it asks whether the lease's holder is still alive.
const HOLDER_CHECK: Duration = Duration::from_millis(500);
/// How long a holder must have been seen gone before its lease is taken over: a replica whose
/// session broke (a database restart) takes its liveness lock again within a second.
const HOLDER_GONE_FOR: Duration = Duration::from_secs(2);

/// Watches the holder of a lease this replica waits for, and takes over the lease of one that
/// is gone (a replica killed during its refresh): its callers need not wait for the expiry.
///
/// The survivor then refreshes with the stored refresh token. Either the IdP never processes the
/// dead holder's request (most drop a request whose client went away) and the refresh works, or
/// it does, and the rotated refresh token died with the holder: the grant is then lost to this
/// service whatever it does, and presenting the consumed token is what finds that out — the IdP
/// refuses it, the credential is marked as needing a new login, and every caller is told so at
/// once instead of waiting for the lease's expiry. Waiting longer would save no grant: if the
/// IdP processes the dead request after the survivor's refresh, reuse detection revokes the
/// grant either way.
struct HolderWatch {
    row: LeasedRow,
    kind: &'static str,
    next_check: tokio::time::Instant,
    gone: Option<(String, tokio::time::Instant)>,
}

impl HolderWatch {
    fn new(row: LeasedRow, kind: &'static str) -> Self {
        Self {
            row,
            kind,
            next_check: tokio::time::Instant::now() + HOLDER_CHECK,
            gone: None,
        }
    }

    /// Whether the lease was voided because its holder is gone: take it at once.
    async fn took_over(
        &mut self,
        store: &impl CredentialStore,
        replica: &Replica<'_>,
    ) -> Result<bool, TokenError> {
        let now = tokio::time::Instant::now();
        if now < self.next_check {
            return Ok(false);
        }
        self.next_check = now + HOLDER_CHECK;
        let Some(holder) = store.dead_lease_holder(self.row).await? else {
            self.gone = None;
            return Ok(false);
        };
        match &self.gone {
            Some((seen, since)) if *seen == holder => {
                if now - *since < HOLDER_GONE_FOR {
                    return Ok(false);
                }
            }
            _ => {
                self.gone = Some((holder, now));
                return Ok(false);
            }
        }
        let released = match self.row {
            LeasedRow::Credential(id) => store.release_lease(id, &holder).await,
            LeasedRow::ClientToken(id) => store.release_client_lease(id, &holder).await,
        };
        released?;
        self.gone = None;
        replica
            .metrics
            .lease_takeovers
            .with_label_values(&[self.kind])
            .inc();
        tracing::warn!(
            holder,
            kind = self.kind,
            "took over the refresh lease of a replica that is gone"
        );
        Ok(true)
    }
}

/// Refreshes a stored credential, under the row's lease, and stores the (rotated) refresh token,
/// compare-and-set on the row's generation, before the access token is handed out. A replica
/// that meets another's live lease waits and serves the result that replica stores.
pub(super) async fn refresh_user_token(
    issuer: &impl TokenIssuer,
    store: &impl CredentialStore,
    replica: &Replica<'_>,
    user_id: &str,
    key: &TokenKey,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    let provider = key.provider.clone();
    // Longer than any refresh can hold the lease: the IdP call is bounded by its timeout and the
    // wait for a late reply.
    let lease_seconds = issuer.refresh_timeout().as_secs() as i64 + 5;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(lease_seconds as u64 * 2);
    let mut first_seen: Option<CredentialVersion> = None;
    let mut holder: Option<HolderWatch> = None;
    loop {
        let stored = store
            .credential(user_id, &provider)
            .await?
            .filter(|t| t.rt_expires_at > store.now())
            .ok_or_else(|| TokenError::NoCredential(user_id.to_owned()))?;
        if stored.state == CredentialState::NeedsRedelegation {
            return Err(TokenError::NeedsRedelegation {
                user_id: user_id.to_owned(),
                provider,
            });
        }
        // Stored by another replica's refresh while we waited: its result is ours, as for a
        // caller queued behind an actor; otherwise the stored token serves if it lives enough.
        let peer_refreshed = first_seen.is_some_and(|seen| seen != stored.version());
        if let Some(token) = stored_access_token(
            &stored,
            key,
            required_time_left,
            peer_refreshed,
            store.now(),
        ) {
            if peer_refreshed {
                replica
                    .metrics
                    .coalesced_callers
                    .with_label_values(&["user"])
                    .inc();
            }
            return Ok(token);
        }
        check_grant(&stored, key)?;
        first_seen.get_or_insert(stored.version());
        let now = store.lease_now();
        if store
            .take_lease(
                stored.version(),
                replica.lease_owner,
                now,
                now + lease_seconds,
            )
            .await?
        {
            return refresh_under_lease(
                issuer,
                store,
                replica,
                lease_seconds,
                stored,
                key,
                required_time_left,
            )
            .await;
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(TokenError::Idp(IdpError::Unavailable {
                idp: provider,
                reason: "another replica's refresh of this credential did not finish".into(),
            }));
        }
        let watch = holder
            .get_or_insert_with(|| HolderWatch::new(LeasedRow::Credential(stored.id), "user"));
        if !watch.took_over(store, replica).await? {
            tokio::time::sleep(LEASE_POLL).await;
        }
    }
}

/// The key of a client token's shared row.
fn client_token_key(key: &TokenKey) -> ClientTokenKey {
    ClientTokenKey {
        token_key: key.client_row_key(),
        provider: key.provider.clone(),
        scope: key.scopes.to_string(),
        audience: key.audience.clone(),
    }
}

/// A client token through the database's shared row: served from it when it lives long enough
/// (or another replica just obtained it), else obtained under the row's lease and stored.
pub(super) async fn shared_client_token(
    issuer: &impl TokenIssuer,
    store: &impl CredentialStore,
    replica: &Replica<'_>,
    key: &TokenKey,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    let row_key = client_token_key(key);
    let lease_seconds = issuer.timeout().as_secs() as i64 + 5;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(lease_seconds as u64 * 2);
    let mut first_seen: Option<CredentialVersion> = None;
    let mut holder: Option<HolderWatch> = None;
    loop {
        let row = store.client_token(&row_key, store.now()).await?;
        let peer_obtained = first_seen.is_some_and(|seen| seen != row.version);
        let left = row.expires_at - store.now();
        if let Some(access_token) = row.access_token.clone()
            && left > 0
            && (peer_obtained || left >= required_time_left)
        {
            if peer_obtained {
                replica
                    .metrics
                    .coalesced_callers
                    .with_label_values(&["client"])
                    .inc();
            }
            return Ok(AccessToken {
                access_token,
                token_type: row.token_type.clone().unwrap_or_else(|| "Bearer".into()),
                expires_at: row.expires_at,
                scope: ScopeSet::parse(&row.scope),
                minted: Instant::now(),
                lifetime: row.expires_in,
                minted_for: required_time_left,
                credential: Some(row.version),
                confirmed_epoch: AtomicU64::new(UNCONFIRMED),
                origin: if peer_obtained {
                    Origin::Replica
                } else {
                    Origin::Stored
                },
                asked_at: AtomicI64::new(0),
                asked_for: AtomicI64::new(0),
                jitter: refresh_jitter(row.expires_in),
            });
        }
        first_seen.get_or_insert(row.version);
        let now = store.lease_now();
        if store
            .take_client_lease(row.version, replica.lease_owner, now, now + lease_seconds)
            .await?
        {
            let issued = match issuer
                .client_credentials(&key.scopes, key.audience.as_deref())
                .await
            {
                Ok(issued) => issued,
                Err(error) => {
                    let release = store.release_client_lease(row.version.id, replica.lease_owner);
                    if let Err(release_error) = release.await {
                        tracing::warn!(error = %release_error, "could not release a client-token lease; it expires by itself");
                    }
                    return Err(error.into());
                }
            };
            let now = store.now();
            let mut token = AccessToken::from_issued(&issued, &key.scopes, required_time_left, now);
            // A client token can be obtained again: not storing it costs peers a refresh, no more.
            match store
                .store_client_token(&row_key, row.version, &token, now)
                .await
            {
                Ok(version) => token.credential = Some(version),
                Err(error) => {
                    tracing::warn!(%error, "could not share a client token with the other replicas")
                }
            }
            return Ok(token);
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(TokenError::Idp(IdpError::Unavailable {
                idp: key.provider.clone(),
                reason: "another replica's client-token request did not finish".into(),
            }));
        }
        let watch = holder.get_or_insert_with(|| {
            HolderWatch::new(LeasedRow::ClientToken(row.version.id), "client")
        });
        if !watch.took_over(store, replica).await? {
            tokio::time::sleep(LEASE_POLL).await;
        }
    }
}

/// The access token stored with the credential, if it is one for this key: same audience, the
/// requested scopes granted, alive (and long enough, unless a peer just obtained it for us).
fn stored_access_token(
    stored: &StoredToken,
    key: &TokenKey,
    required_time_left: i64,
    peer_refreshed: bool,
    now: i64,
) -> Option<AccessToken> {
    let access_token = stored.access_token.clone()?;
    let granted = ScopeSet::parse(&stored.scope);
    let left = stored.expires_at - now;
    let fits = stored.audience == key.audience
        && key.scopes.iter().all(|s| granted.contains(s))
        && left > 0
        && (peer_refreshed || left >= required_time_left);
    fits.then(|| AccessToken {
        access_token,
        token_type: stored.token_type.clone().unwrap_or_else(|| "Bearer".into()),
        expires_at: stored.expires_at,
        scope: granted,
        minted: Instant::now(),
        lifetime: stored.expires_in,
        minted_for: required_time_left,
        credential: Some(stored.version()),
        confirmed_epoch: AtomicU64::new(UNCONFIRMED),
        origin: if peer_refreshed {
            Origin::Replica
        } else {
            Origin::Stored
        },
        asked_at: AtomicI64::new(0),
        asked_for: AtomicI64::new(0),
        jitter: refresh_jitter(stored.expires_in),
    })
}

/// Refuses scopes the user did not delegate, before the IdP sees them: an IdP that rotates
/// refresh tokens may consume the refresh token and only then refuse the scope, which burns the
/// grant. Checked against the grant, not the stored access token's scope: a refresh granted
/// less than was delegated leaves the rest available.
fn check_grant(stored: &StoredToken, key: &TokenKey) -> Result<(), TokenError> {
    let grant = ScopeSet::parse(&stored.grant_scope);
    // The delegated token named no scope (updateToken accepts that, as DIRAC does, and an IdP
    // omits `scope` when it granted what was asked): what the grant covers is unknown here, and
    // refusing everything would break those users' tokens, so the IdP decides as before.
    if grant.is_empty() {
        return Ok(());
    }
    let missing = key.scopes.difference(&grant);
    if missing.is_empty() {
        return Ok(());
    }
    Err(TokenError::ScopeNotGranted {
        user_id: stored.user_id.clone(),
        provider: stored.provider.clone(),
        scopes: missing,
    })
}

async fn refresh_under_lease(
    issuer: &impl TokenIssuer,
    store: &impl CredentialStore,
    replica: &Replica<'_>,
    lease_seconds: i64,
    stored: StoredToken,
    key: &TokenKey,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    let (user_id, provider) = (stored.user_id.clone(), stored.provider.clone());
    let renew = async {
        loop {
            tokio::time::sleep(Duration::from_secs((lease_seconds / 3).max(1) as u64)).await;
            let now = store.lease_now();
            let renewed = store
                .take_lease(
                    stored.version(),
                    replica.lease_owner,
                    now,
                    now + lease_seconds,
                )
                .await;
            if !matches!(renewed, Ok(true)) {
                tracing::warn!(user_id, provider, "could not renew the refresh lease");
            }
        }
    };
    let started = tokio::time::Instant::now();
    let refreshed = tokio::select! {
        refreshed = issuer.refresh(&stored.refresh_token, &key.scopes, key.audience.as_deref()) => refreshed,
        never = renew => never,
    };
    let late = started.elapsed() > caller_deadline(issuer);
    let outcome = match refreshed {
        Ok(issued) => {
            if late {
                tracing::warn!(
                    user_id,
                    provider,
                    seconds = started.elapsed().as_secs_f64(),
                    "the IdP answered a refresh after its callers timed out; the rotated refresh token is stored"
                );
            }
            let now = store.now();
            let mut token = AccessToken::from_issued(&issued, &key.scopes, required_time_left, now);
            // Stored before it is handed out; the write also ends the lease.
            let version =
                store_refreshed(store, replica.metrics, &stored, &issued, &token, key, now).await?;
            if issued.refresh_token.is_some() {
                replica.audit(
                    AuditKind::Rotate,
                    &stored,
                    "ok",
                    format!("generation {}", version.generation),
                );
            }
            token.credential = Some(version);
            return Ok(token);
        }
        Err(error @ (IdpError::InvalidGrant(_) | IdpError::ReplyLost { .. })) => {
            // The refresh token is dead (refused) or possibly consumed (reply lost): presenting
            // it again would at best fail, at worst make the IdP revoke the whole grant.
            tracing::warn!(user_id, provider, %error, "credential needs a new login");
            let mark = store.mark_needs_redelegation(stored.version(), store.now());
            let outcome = match mark.await {
                Ok(_) => "ok",
                Err(mark) => {
                    tracing::error!(user_id, provider, error = %mark, "could not mark the credential");
                    "internal"
                }
            };
            let reason = match &error {
                IdpError::InvalidGrant(_) => "the IdP refused the refresh token (invalid_grant)",
                _ => "the IdP's reply to a refresh was lost: the refresh token may be consumed",
            };
            replica.audit(
                AuditKind::NeedsRedelegation,
                &stored,
                outcome,
                reason.to_owned(),
            );
            Err(match error {
                IdpError::InvalidGrant(_) => TokenError::Idp(error),
                _ => TokenError::NeedsRedelegation {
                    user_id: user_id.clone(),
                    provider: provider.clone(),
                },
            })
        }
        Err(error) => {
            if late {
                tracing::warn!(
                    user_id, provider, %error,
                    "a refresh failed after its callers timed out; had the IdP processed it without answering, the stored refresh token would be consumed"
                );
            }
            Err(error.into())
        }
    };
    if let Err(error) = store.release_lease(stored.id, replica.lease_owner).await {
        tracing::warn!(user_id, provider, %error, "could not release the refresh lease; it expires by itself");
    }
    outcome
}

async fn store_refreshed(
    store: &impl CredentialStore,
    metrics: &Metrics,
    stored: &StoredToken,
    issued: &IssuedToken,
    token: &AccessToken,
    key: &TokenKey,
    now: i64,
) -> Result<CredentialVersion, TokenError> {
    let rotated = issued.refresh_token.clone();
    let update = TokenUpdate {
        rt_expires_at: rotated
            .as_ref()
            .and_then(|t| crate::domain::jwt_expiry(t.expose()))
            .unwrap_or(stored.rt_expires_at),
        refresh_token: rotated.unwrap_or_else(|| stored.refresh_token.clone()),
        access_token: Some(token.access_token.clone()),
        expires_at: token.expires_at,
        expires_in: issued.expires_in.unwrap_or(0),
        token_type: Some(token.token_type.clone()),
        scope: token.scope.to_string(),
        audience: key.audience.clone(),
    };
    let write = store.store_refreshed(
        stored.version(),
        &stored.user_id,
        &stored.provider,
        update,
        now,
    );
    write.await.map(|row| row.version()).map_err(|error| {
        metrics.refresh_token_persist_failures.inc();
        tracing::error!(
            user_id = %stored.user_id, provider = %stored.provider, %error,
            "REFRESHED TOKEN NOT STORED: the IdP rotated the refresh token but the new one could not be saved"
        );
        TokenError::NotStored
    })
}

#[cfg(test)]
mod tests;
