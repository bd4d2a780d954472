//! The token path: an access-token cache ([`cache`]) in front of one refresh actor per stored
//! credential and one per client-token key ([`refresh`]), which obtain tokens through the
//! cross-replica lease protocol ([`lease`]) and, for an IdP that narrows audiences by exchange,
//! exchange a broad one ([`exchange`]); the [`TokenBroker`] ties them together for the request
//! path. An actor's handler is atomic, so one IdP exchange per key is in flight; callers
//! queued behind it are answered from its result.

mod broker;
mod cache;
mod exchange;
mod lease;
mod owner;
mod refresh;
mod seams;
mod sync;

pub(crate) use broker::{CacheSync, TokenBroker};
pub(crate) use cache::{AccessToken, Subject, TokenKey};
pub(crate) use refresh::RefreshAheadPolicy;

use crate::db::DbError;
use crate::domain::scopes::ScopeSet;
use crate::idp::IdpError;

/// Why no token could be had; the message is what callers see.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("No token found for {0}")]
    NoCredential(String),
    #[error(
        "The stored token of {user_id} at {provider} was refused by the IdP; a new login (updateToken) is needed"
    )]
    NeedsRedelegation { user_id: String, provider: String },
    /// Asked for scopes beyond what the user delegated: refused before the IdP is contacted.
    #[error(
        "The grant of {user_id} at {provider} does not include {scopes}: ask without them, or log in again (updateToken) delegating them"
    )]
    ScopeNotGranted {
        user_id: String,
        provider: String,
        scopes: ScopeSet,
    },
    #[error(transparent)]
    Idp(#[from] IdpError),
    #[error(
        "the refreshed token could not be stored; refusing to hand out a token whose refresh token is lost"
    )]
    NotStored,
    #[error("token storage is unavailable")]
    Storage,
}

impl From<DbError> for TokenError {
    fn from(error: DbError) -> Self {
        tracing::error!(%error, "storage error on the token path");
        TokenError::Storage
    }
}
