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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    impl TokenKey {
        /// The unit tests' key: IAM, its client `tm-client`, `openid compute.read`, no audience.
        pub(in crate::actors::tokens) fn for_tests(subject: Subject) -> Self {
            Self {
                subject,
                provider: "IAM".into(),
                client_id: "tm-client".into(),
                scopes: ScopeSet::parse("openid compute.read"),
                audience: None,
            }
        }
    }

    fn user_key(user_id: &str) -> TokenKey {
        TokenKey::for_tests(Subject::User(user_id.into()))
    }

    /// A token minted `age` seconds before NOW, for a request of `minted_for` seconds, with the
    /// IdP's `lifetime`.
    fn token(lifetime: i64, age: i64, minted_for: i64) -> AccessToken {
        AccessToken {
            access_token: Secret::new(format!("at-{lifetime}-{age}")),
            token_type: "Bearer".into(),
            expires_at: NOW - age + lifetime,
            scope: ScopeSet::parse("openid compute.read"),
            minted: Instant::now(),
            lifetime,
            minted_for,
            credential: None,
        }
    }

    #[test]
    fn a_token_serves_requests_it_outlives() {
        let fresh = token(3600, 0, 0);
        assert!(fresh.serves(0, NOW));
        assert!(fresh.serves(3600, NOW));
        assert!(!fresh.serves(3601, NOW), "minted for 0 s, so no leeway");
    }

    #[test]
    fn an_expired_token_serves_nothing() {
        let old = token(600, 600, 3600);
        assert!(!old.serves(0, NOW));
        let fresh_but_dead = token(0, 0, 3600);
        assert!(!fresh_but_dead.serves(0, NOW));
    }

    #[test]
    fn a_shorter_token_than_asked_serves_while_a_refresh_could_not_do_better() {
        // The IdP gave 600 s to a request for 3600 s: as long as less than a tenth of it is
        // spent, the same request is served by it rather than by another refresh.
        let short = token(600, 60, 3600);
        assert!(short.serves(3600, NOW));
        assert!(
            !token(600, 61, 3600).serves(3600, NOW),
            "more than a tenth spent"
        );
        assert!(
            !short.serves(3601, NOW),
            "a request for more than it was minted for"
        );
        assert!(
            !token(600, 0, 600).serves(3600, NOW),
            "minted for a shorter request"
        );
    }

    #[test]
    fn the_cache_serves_a_key_only_what_lives_long_enough() {
        let cache = TokenCache::default();
        let alice = user_key("alice");
        assert!(cache.get(&alice, 0, NOW).is_none());
        cache.insert(alice.clone(), Arc::new(token(600, 0, 0)));
        assert!(cache.get(&alice, 600, NOW).is_some());
        assert!(cache.get(&alice, 601, NOW).is_none());
        assert!(cache.get(&user_key("bob"), 0, NOW).is_none());
        cache.forget(&alice);
        assert!(cache.get(&alice, 0, NOW).is_none());
    }

    #[test]
    fn minted_since_answers_callers_queued_before_the_token_was_minted() {
        let cache = TokenCache::default();
        let alice = user_key("alice");
        let queued = Instant::now();
        let mut before = token(60, 0, 0);
        before.minted = queued - Duration::from_millis(1);
        cache.insert(alice.clone(), Arc::new(before));
        assert!(
            cache.minted_since(&alice, queued, NOW).is_none(),
            "minted before the caller queued"
        );

        let after = token(60, 0, 3600);
        cache.insert(alice.clone(), Arc::new(after));
        let served = cache
            .minted_since(&alice, queued, NOW)
            .expect("minted since");
        assert_eq!(served.access_token.expose(), "at-60-0");
        assert!(
            cache.minted_since(&alice, queued, NOW + 60).is_none(),
            "expired"
        );
    }

    #[test]
    fn forget_user_forgets_every_token_of_that_user_only() {
        let cache = TokenCache::default();
        let mut alice_elsewhere = user_key("alice");
        alice_elsewhere.provider = "CheckIn".into();
        let keys = [
            user_key("alice"),
            alice_elsewhere,
            user_key("bob"),
            TokenKey::for_tests(Subject::Client),
        ];
        for key in &keys {
            cache.insert(key.clone(), Arc::new(token(600, 0, 0)));
        }
        cache.forget_user("alice");
        let kept: Vec<bool> = keys
            .iter()
            .map(|k| cache.get(k, 0, NOW).is_some())
            .collect();
        assert_eq!(kept, [false, false, true, true]);
    }
}
