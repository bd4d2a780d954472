//! The key types of the token path and the access-token cache.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::db::CredentialVersion;
use crate::domain::Secret;
use crate::domain::scopes::ScopeSet;
use crate::idp::IssuedToken;

/// Whose token: a stored user credential, or DIRAC's own client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    User(String),
    Client,
}

/// Everything that makes two access tokens different.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    pub(crate) subject: Subject,
    pub(crate) provider: String,
    pub(crate) client_id: String,
    pub(crate) scopes: ScopeSet,
    pub(crate) audience: Option<String>,
}

/// An access token the service holds.
#[derive(Clone, Debug)]
pub(crate) struct AccessToken {
    pub(crate) access_token: Secret,
    pub(crate) token_type: String,
    pub(crate) expires_at: i64,
    /// What the IdP granted (the request's scopes when it did not say).
    pub(crate) scope: ScopeSet,
    pub(super) minted: Instant,
    /// The lifetime the IdP gave it.
    pub(super) lifetime: i64,
    /// The `requiredTimeLeft` of the request that had it minted.
    pub(super) minted_for: i64,
    /// The stored credential it came from (user tokens).
    pub(super) credential: Option<CredentialVersion>,
}

impl AccessToken {
    pub(super) fn from_issued(
        issued: &IssuedToken,
        requested: &ScopeSet,
        minted_for: i64,
        now: i64,
    ) -> Self {
        Self {
            access_token: issued.access_token.clone(),
            token_type: issued.token_type.clone(),
            expires_at: now + issued.expires_in.unwrap_or(0),
            scope: issued.scope.clone().unwrap_or_else(|| requested.clone()),
            minted: Instant::now(),
            lifetime: issued.expires_in.unwrap_or(0),
            minted_for,
            credential: None,
        }
    }

    pub(crate) fn seconds_left(&self, now: i64) -> i64 {
        self.expires_at - now
    }

    /// Whether this token serves a request for `required_time_left` seconds: it lives that long;
    /// or it was minted for at least as much and is so fresh that a refresh would gain less than
    /// a tenth of its lifetime (the IdP issues shorter tokens than asked for: refreshing again
    /// cannot do better, and every such request would otherwise cost a refresh).
    fn serves(&self, required_time_left: i64, now: i64) -> bool {
        let left = self.seconds_left(now);
        let as_fresh_as_it_gets = required_time_left <= self.minted_for
            && left >= self.lifetime - (self.lifetime / 10).max(1);
        left > 0 && (left >= required_time_left || as_fresh_as_it_gets)
    }
}

/// Access tokens by key. Entries are served only while they live long enough for the request.
#[derive(Default)]
pub(super) struct TokenCache {
    entries: RwLock<HashMap<TokenKey, Arc<AccessToken>>>,
}

impl TokenCache {
    pub(super) fn get(
        &self,
        key: &TokenKey,
        required_time_left: i64,
        now: i64,
    ) -> Option<Arc<AccessToken>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|t| t.serves(required_time_left, now))
            .cloned()
    }

    /// The token minted for `key` since `since`, if it is still alive, whatever its life.
    pub(super) fn minted_since(
        &self,
        key: &TokenKey,
        since: Instant,
        now: i64,
    ) -> Option<Arc<AccessToken>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|t| t.minted >= since && t.seconds_left(now) > 0)
            .cloned()
    }

    pub(super) fn forget(&self, key: &TokenKey) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    pub(super) fn insert(&self, key: TokenKey, token: Arc<AccessToken>) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, token);
    }

    /// Forgets every token of a user (after updateToken or deleteToken).
    pub(super) fn forget_user(&self, user_id: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| !matches!(&key.subject, Subject::User(id) if id == user_id));
    }
}
