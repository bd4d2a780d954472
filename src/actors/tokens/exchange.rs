//! Audience narrowing by token exchange (`audience_narrowing = exchange`, RFC 8693): a user token
//! for an audience is an exchange of the user's broad access token (same scopes, no audience),
//! which is obtained like any other token — from the cache, or refreshed under the lease
//! protocol without audience. The refresh token never travels with a caller's audience: an IdP
//! that rotates refresh tokens and then refuses the audience would have burnt the grant, while a
//! refused exchange consumes nothing and fails that call only.
//!
//! It runs in the credential's refresh actor like a refresh: callers of one narrowed key queued
//! behind it are answered from its result (one exchange, not one per caller). Replicas do not
//! coordinate exchanges: each may make its own, which costs an IdP request and risks no grant.

use std::sync::Arc;

use super::cache::TokenCache;
use super::lease::{Replica, refresh_user_token};
use super::seams::{CredentialStore, TokenIssuer};
use super::sync::Stamp;
use super::{AccessToken, TokenError, TokenKey};
use crate::idp::{IdpError, IssuedToken};

/// A user token for `key`: by exchange when the IdP narrows audiences so and `key` names one,
/// else refreshed (or served from the stored credential) under the lease protocol.
#[expect(
    clippy::too_many_arguments,
    reason = "the refresh actor's state, passed as refresh_user_token takes it"
)]
pub(super) async fn user_token(
    issuer: &impl TokenIssuer,
    store: &impl CredentialStore,
    replica: &Replica<'_>,
    cache: &TokenCache,
    read_at: Stamp,
    user_id: &str,
    key: &TokenKey,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    match key.audience.as_deref() {
        Some(audience) if issuer.narrows_audiences_by_exchange() => {
            exchanged_user_token(
                issuer,
                store,
                replica,
                cache,
                read_at,
                user_id,
                key,
                audience,
                required_time_left,
            )
            .await
        }
        _ => refresh_user_token(issuer, store, replica, user_id, key, required_time_left).await,
    }
}

/// A token for `key`, narrowed to `audience` (its own), by exchange of the broad token of the
/// same subject and scopes; the broad token is cached under its own key.
#[expect(
    clippy::too_many_arguments,
    reason = "the refresh actor's state, passed as refresh_user_token takes it"
)]
async fn exchanged_user_token(
    issuer: &impl TokenIssuer,
    store: &impl CredentialStore,
    replica: &Replica<'_>,
    cache: &TokenCache,
    read_at: Stamp,
    user_id: &str,
    key: &TokenKey,
    audience: &str,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    let broad_key = TokenKey {
        audience: None,
        ..key.clone()
    };
    // A cached broad token serves only while the change feed vouches for it; else the stored
    // credential is read (its access token serves when it lives long enough) or refreshed.
    let cached = cache
        .get(&broad_key, required_time_left, store.now())
        .filter(|token| cache.trusts(token));
    let broad = match cached {
        Some(token) => token,
        None => {
            let refreshed = refresh_user_token(
                issuer,
                store,
                replica,
                user_id,
                &broad_key,
                required_time_left,
            );
            cached_broad(cache, &broad_key, refreshed.await?, read_at)
        }
    };
    let (broad, issued) = match narrow(issuer, user_id, key, audience, &broad).await {
        Err(TokenError::Idp(IdpError::ExchangeRefused { error, .. }))
            if error == "invalid_grant" =>
        {
            // The IdP no longer knows the broad token (revoked, say), which is also the one
            // stored with the credential: one refresh without audience replaces it (asking for
            // longer than it lives keeps the stored copy from serving), exchanged once more.
            cache.forget(&broad_key);
            let longer = broad.seconds_left(store.now()).max(required_time_left) + 1;
            let refreshed = refresh_user_token(issuer, store, replica, user_id, &broad_key, longer);
            let fresh = cached_broad(cache, &broad_key, refreshed.await?, read_at);
            let issued = narrow(issuer, user_id, key, audience, &fresh).await?;
            (fresh, issued)
        }
        result => (broad, result?),
    };
    let mut token = AccessToken::from_issued(&issued, &key.scopes, required_time_left, store.now());
    // Derived from the broad token's credential version: forgotten and confirmed with it.
    token.credential = broad.credential;
    Ok(token)
}

fn cached_broad(
    cache: &TokenCache,
    broad_key: &TokenKey,
    token: AccessToken,
    read_at: Stamp,
) -> Arc<AccessToken> {
    let token = Arc::new(token);
    cache.insert(broad_key.clone(), token.clone(), read_at);
    token
}

/// Exchanges `broad` for a token narrowed to `audience` and `key`'s scopes; scopes the broad
/// token lacks are refused first (no up-scoping).
async fn narrow(
    issuer: &impl TokenIssuer,
    user_id: &str,
    key: &TokenKey,
    audience: &str,
    broad: &AccessToken,
) -> Result<IssuedToken, TokenError> {
    let beyond = key.scopes.difference(&broad.scope);
    if !beyond.is_empty() {
        return Err(TokenError::ScopeNotGranted {
            user_id: user_id.to_owned(),
            provider: key.provider.clone(),
            scopes: beyond,
        });
    }
    let exchanged = issuer.token_exchange(&broad.access_token, &key.scopes, audience);
    Ok(exchanged.await?)
}
