//! The key types of the token path and the access-token cache.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use super::sync::{Stamp, SyncState, UNCONFIRMED};
use crate::db::{Change, ChangeKind, CredentialVersion};
use crate::domain::Secret;
use crate::domain::audit::Origin;
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
#[derive(Debug)]
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
    /// The stored credential (user tokens) or shared row (client tokens on a shared database)
    /// it came from.
    pub(super) credential: Option<CredentialVersion>,
    /// The sync epoch it was last confirmed in (see [`TokenCache::trusts`]).
    pub(super) confirmed_epoch: AtomicU64,
    /// Where this process got it: minted, stored by another replica's refresh while this one
    /// waited, or read from the store. Served from the cache later, it is a cache hit.
    pub(crate) origin: Origin,
    /// When a caller last asked for it (Unix seconds; 0: never since it was cached), and the
    /// longest `requiredTimeLeft` asked: what decides its background refresh.
    pub(super) asked_at: AtomicI64,
    pub(super) asked_for: AtomicI64,
    /// Seconds its background refresh comes early, so that tokens minted together are not
    /// refreshed together.
    pub(super) jitter: i64,
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
            confirmed_epoch: AtomicU64::new(UNCONFIRMED),
            origin: Origin::Minted,
            asked_at: AtomicI64::new(0),
            asked_for: AtomicI64::new(0),
            jitter: refresh_jitter(issued.expires_in.unwrap_or(0)),
        }
    }

    /// A caller was served this token for `required_time_left` seconds. One relaxed load per
    /// hit, a store at most once a second.
    pub(crate) fn note_asked(&self, required_time_left: i64) {
        let now = crate::domain::unix_now();
        if self.asked_at.load(Ordering::Relaxed) != now {
            self.asked_at.store(now, Ordering::Relaxed);
        }
        if required_time_left > self.asked_for.load(Ordering::Relaxed) {
            self.asked_for
                .fetch_max(required_time_left, Ordering::Relaxed);
        }
    }

    /// The longest `requiredTimeLeft` asked for it, if a caller asked for it at or after
    /// `since` (Unix seconds).
    pub(super) fn asked_since(&self, since: i64) -> Option<i64> {
        let asked_at = self.asked_at.load(Ordering::Relaxed);
        (asked_at != 0 && asked_at >= since).then(|| self.asked_for.load(Ordering::Relaxed))
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

/// A random share of up to 2 % of `lifetime` (at most 5 s), in whole seconds.
pub(super) fn refresh_jitter(lifetime: i64) -> i64 {
    let span = (lifetime / 50).clamp(0, 5);
    if span == 0 {
        return 0;
    }
    // RandomState's keys are random per instance.
    let random = std::collections::hash_map::RandomState::new().hash_one(lifetime);
    (random % (span as u64 + 1)) as i64
}

/// Whose cached tokens an announced change concerns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Owner {
    Credential {
        user_id: String,
        provider: String,
    },
    /// A shared client token's row, by its token key.
    Client(String),
}

impl Owner {
    fn of(key: &TokenKey) -> Self {
        match &key.subject {
            Subject::User(user_id) => Self::Credential {
                user_id: user_id.clone(),
                provider: key.provider.clone(),
            },
            Subject::Client => Self::Client(key.client_row_key()),
        }
    }

    fn of_change(change: &Change) -> Self {
        match change.kind {
            ChangeKind::Credential => Self::Credential {
                user_id: change.subject.clone(),
                provider: change.provider.clone(),
            },
            ChangeKind::Client => Self::Client(change.subject.clone()),
        }
    }
}

impl TokenKey {
    /// The key of a client token's shared row: a digest of everything that makes the token.
    pub(super) fn client_row_key(&self) -> String {
        let material = format!(
            "{}\n{}\n{}\n{}",
            self.provider,
            self.client_id,
            self.scopes,
            self.audience.as_deref().unwrap_or_default()
        );
        let digest = openssl::sha::sha256(material.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How many applied changes the cache remembers for the tokens being obtained meanwhile: a token
/// read before more changes than this were applied is cached unconfirmed.
const RECENT_CHANGES: usize = 4096;

/// A change as the cache remembers it: whose, how late, and its number among those applied.
struct Applied {
    number: u64,
    owner: Owner,
    announced: (i64, i64),
}

#[derive(Default)]
struct Entries {
    tokens: HashMap<TokenKey, Arc<AccessToken>>,
    /// The keys cached for each credential and client-token row, for announced changes.
    by_owner: HashMap<Owner, Vec<TokenKey>>,
    /// The last [`RECENT_CHANGES`] changes applied, oldest first.
    recent: VecDeque<Applied>,
}

/// A change's place in a row's history: a deletion is later than every generation of its row;
/// a row stored again has a higher id.
fn announced(change: &Change) -> (i64, i64) {
    (change.row_id, change.generation.unwrap_or(i64::MAX))
}

/// Whether `token` came from an earlier version of its row than `announced`.
fn older(token: &AccessToken, announced: (i64, i64)) -> bool {
    token
        .credential
        .is_none_or(|v| (v.id, v.generation) < announced)
}

impl Entries {
    fn remove(&mut self, key: &TokenKey) -> Option<Arc<AccessToken>> {
        let removed = self.tokens.remove(key)?;
        let owner = Owner::of(key);
        if let Some(keys) = self.by_owner.get_mut(&owner) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
        Some(removed)
    }
}

/// Access tokens by key, in step with the database's announced changes (see [`SyncState`]).
/// Entries are served only while they live long enough for the request.
pub(super) struct TokenCache {
    entries: RwLock<Entries>,
    sync: SyncState,
}

impl TokenCache {
    pub(super) fn new(sync: SyncState) -> Self {
        Self {
            entries: RwLock::default(),
            sync,
        }
    }

    pub(super) fn sync(&self) -> &SyncState {
        &self.sync
    }

    pub(super) fn get(
        &self,
        key: &TokenKey,
        required_time_left: i64,
        now: i64,
    ) -> Option<Arc<AccessToken>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .tokens
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
            .tokens
            .get(key)
            .filter(|t| t.minted >= since && t.seconds_left(now) > 0)
            .cloned()
    }

    /// Whether `token` is still the one cached for `key`.
    pub(super) fn holds(&self, key: &TokenKey, token: &Arc<AccessToken>) -> bool {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .tokens
            .get(key)
            .is_some_and(|cached| Arc::ptr_eq(cached, token))
    }

    pub(super) fn forget(&self, key: &TokenKey) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Caches `token`, read from the database when the sync state was `read_at`: confirmed in
    /// that epoch unless a gap began since, or a later change of its own row was applied since
    /// (which its read may have missed), or too many changes to tell; else left for its first
    /// hit to confirm.
    pub(super) fn insert(&self, key: TokenKey, token: Arc<AccessToken>, read_at: Stamp) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let owner = Owner::of(&key);
        // Under the write lock, which every applied change takes too.
        let now = self.sync.stamp();
        let remembered = entries
            .recent
            .front()
            .is_none_or(|oldest| oldest.number <= read_at.applied + 1);
        let overtaken = entries
            .recent
            .iter()
            .rev()
            .take_while(|change| change.number > read_at.applied)
            .any(|change| change.owner == owner && older(&token, change.announced));
        let confirmed = now.epoch == read_at.epoch
            && (now.applied == read_at.applied || (remembered && !overtaken));
        let epoch = if confirmed {
            read_at.epoch
        } else {
            UNCONFIRMED
        };
        token.confirmed_epoch.store(epoch, Ordering::Release);
        if entries.tokens.insert(key.clone(), token).is_none() {
            entries.by_owner.entry(owner).or_default().push(key);
        }
    }

    /// Whether `token` is served without asking the database: the cache is in step with the
    /// announced changes, and the token was confirmed since the feed's last gap.
    pub(super) fn trusts(&self, token: &AccessToken) -> bool {
        self.sync.in_step() && token.confirmed_epoch.load(Ordering::Acquire) == self.sync.epoch()
    }

    /// After the database confirmed `token` for `key` (its check began at `checked_at`): trusted
    /// from now on, if no gap began since and no change removed it meanwhile.
    pub(super) fn confirmed(&self, key: &TokenKey, token: &Arc<AccessToken>, checked_at: Stamp) {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let still_cached = entries
            .tokens
            .get(key)
            .is_some_and(|cached| Arc::ptr_eq(cached, token));
        if still_cached && self.sync.in_step() && self.sync.epoch() == checked_at.epoch {
            token
                .confirmed_epoch
                .store(checked_at.epoch, Ordering::Release);
        }
    }

    /// Applies an announced change: the tokens of its credential or client-token row that came
    /// from an older version are forgotten. Returns how many. A change can arrive after the
    /// token of a later one was cached (this replica's own refresh, read back from the feed a
    /// moment later): that token stays.
    pub(super) fn apply(&self, change: &Change) -> usize {
        let owner = Owner::of_change(change);
        let announced = announced(change);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let number = self.sync.applied.fetch_add(1, Ordering::AcqRel) + 1;
        let stale: Vec<TokenKey> = entries
            .by_owner
            .get(&owner)
            .into_iter()
            .flatten()
            .filter(|key| {
                entries
                    .tokens
                    .get(*key)
                    .is_some_and(|token| older(token, announced))
            })
            .cloned()
            .collect();
        for key in &stale {
            entries.remove(key);
        }
        if entries.recent.len() == RECENT_CHANGES {
            entries.recent.pop_front();
        }
        entries.recent.push_back(Applied {
            number,
            owner,
            announced,
        });
        stale.len()
    }

    /// Forgets every token of a user (after updateToken or deleteToken).
    pub(super) fn forget_user(&self, user_id: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<TokenKey> = entries
            .by_owner
            .iter()
            .filter(|(owner, _)| {
                matches!(owner, Owner::Credential { user_id: id, .. } if id == user_id)
            })
            .flat_map(|(_, keys)| keys.iter().cloned())
            .collect();
        for key in &keys {
            entries.remove(key);
        }
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
            confirmed_epoch: AtomicU64::new(UNCONFIRMED),
            origin: Origin::Minted,
            asked_at: AtomicI64::new(0),
            asked_for: AtomicI64::new(0),
            jitter: 0,
        }
    }

    fn cache() -> TokenCache {
        TokenCache::new(SyncState::new(Duration::from_secs(1)))
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
        let cache = cache();
        let alice = user_key("alice");
        assert!(cache.get(&alice, 0, NOW).is_none());
        cache.insert(
            alice.clone(),
            Arc::new(token(600, 0, 0)),
            cache.sync().stamp(),
        );
        assert!(cache.get(&alice, 600, NOW).is_some());
        assert!(cache.get(&alice, 601, NOW).is_none());
        assert!(cache.get(&user_key("bob"), 0, NOW).is_none());
        cache.forget(&alice);
        assert!(cache.get(&alice, 0, NOW).is_none());
    }

    #[test]
    fn minted_since_answers_callers_queued_before_the_token_was_minted() {
        let cache = cache();
        let alice = user_key("alice");
        let queued = Instant::now();
        let mut before = token(60, 0, 0);
        before.minted = queued - Duration::from_millis(1);
        cache.insert(alice.clone(), Arc::new(before), cache.sync().stamp());
        assert!(
            cache.minted_since(&alice, queued, NOW).is_none(),
            "minted before the caller queued"
        );

        let after = token(60, 0, 3600);
        cache.insert(alice.clone(), Arc::new(after), cache.sync().stamp());
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
        let cache = cache();
        let mut alice_elsewhere = user_key("alice");
        alice_elsewhere.provider = "CheckIn".into();
        let keys = [
            user_key("alice"),
            alice_elsewhere,
            user_key("bob"),
            TokenKey::for_tests(Subject::Client),
        ];
        for key in &keys {
            cache.insert(
                key.clone(),
                Arc::new(token(600, 0, 0)),
                cache.sync().stamp(),
            );
        }
        cache.forget_user("alice");
        let kept: Vec<bool> = keys
            .iter()
            .map(|k| cache.get(k, 0, NOW).is_some())
            .collect();
        assert_eq!(kept, [false, false, true, true]);
    }

    fn version(id: i64, generation: i64) -> Option<CredentialVersion> {
        Some(CredentialVersion { id, generation })
    }

    fn credential_change(user_id: &str, row: Option<CredentialVersion>) -> Change {
        Change {
            kind: ChangeKind::Credential,
            subject: user_id.into(),
            provider: "IAM".into(),
            row_id: row.map_or(1, |v| v.id),
            generation: row.map(|v| v.generation),
        }
    }

    fn cached(cache: &TokenCache, key: &TokenKey, credential: Option<CredentialVersion>) {
        let mut token = token(600, 0, 0);
        token.credential = credential;
        cache.insert(key.clone(), Arc::new(token), cache.sync().stamp());
    }

    #[test]
    fn an_announced_change_forgets_only_tokens_of_another_version_of_its_credential() {
        let cache = cache();
        let (alice, bob) = (user_key("alice"), user_key("bob"));
        let mut alice_narrow = user_key("alice");
        alice_narrow.scopes = ScopeSet::parse("openid");
        cached(&cache, &alice, version(1, 1));
        cached(&cache, &alice_narrow, version(1, 2));
        cached(&cache, &bob, version(2, 1));

        // Alice's refresh stored generation 2: the token from generation 1 goes, the one minted
        // by that refresh stays; Bob's is another credential.
        assert_eq!(cache.apply(&credential_change("alice", version(1, 2))), 1);
        assert!(cache.get(&alice, 0, NOW).is_none());
        assert!(cache.get(&alice_narrow, 0, NOW).is_some());
        assert!(cache.get(&bob, 0, NOW).is_some());

        // Generation 1 read back from the feed late: the token of generation 2 stays.
        assert_eq!(cache.apply(&credential_change("alice", version(1, 1))), 0);
        assert!(cache.get(&alice_narrow, 0, NOW).is_some());

        // Deleted: everything of Alice's goes.
        assert_eq!(cache.apply(&credential_change("alice", None)), 1);
        assert!(cache.get(&alice_narrow, 0, NOW).is_none());
        assert!(cache.get(&bob, 0, NOW).is_some());

        // Stored again (a new row): the old row's deletion, read late, leaves it alone.
        cached(&cache, &alice, version(3, 1));
        assert_eq!(cache.apply(&credential_change("alice", None)), 0);
        assert!(cache.get(&alice, 0, NOW).is_some());
    }

    #[test]
    fn a_client_token_change_concerns_its_row_only() {
        let cache = cache();
        let client = TokenKey::for_tests(Subject::Client);
        let mut other = TokenKey::for_tests(Subject::Client);
        other.audience = Some("https://ce.example.org".into());
        cached(&cache, &client, version(5, 1));
        cached(&cache, &other, version(6, 1));
        let change = Change {
            kind: ChangeKind::Client,
            subject: client.client_row_key(),
            provider: "IAM".into(),
            row_id: 5,
            generation: Some(2),
        };
        assert_eq!(cache.apply(&change), 1);
        assert!(cache.get(&client, 0, NOW).is_none());
        assert!(cache.get(&other, 0, NOW).is_some());
    }

    #[test]
    fn a_token_is_trusted_only_in_step_and_confirmed_in_the_current_epoch() {
        let cache = cache();
        let alice = user_key("alice");
        cached(&cache, &alice, version(1, 1));
        let token = cache.get(&alice, 0, NOW).unwrap();
        assert!(!cache.trusts(&token), "no sync confirmed yet");
        cache.sync().confirm(Instant::now());
        assert!(cache.trusts(&token));

        // A gap: confirmed again by the database, then trusted again.
        let before_gap = cache.sync().stamp();
        cache.sync().gap();
        assert!(!cache.trusts(&token));
        cache.confirmed(&alice, &token, before_gap);
        assert!(!cache.trusts(&token), "checked before the gap began");
        cache.confirmed(&alice, &token, cache.sync().stamp());
        assert!(cache.trusts(&token));
    }

    #[test]
    fn a_token_is_cached_confirmed_when_the_changes_applied_meanwhile_are_not_later_ones_of_its_row()
     {
        let cache = cache();
        cache.sync().confirm(Instant::now());
        let alice = user_key("alice");
        let read_at = cache.sync().stamp();
        // Applied while Alice's refresh ran: Bob's login, and the refresh's own write.
        cache.apply(&credential_change("bob", version(2, 1)));
        cache.apply(&credential_change("alice", version(1, 2)));
        let mut token = token(600, 0, 0);
        token.credential = version(1, 2);
        cache.insert(alice.clone(), Arc::new(token), read_at);
        let token = cache.get(&alice, 0, NOW).unwrap();
        assert!(cache.trusts(&token));
    }

    #[test]
    fn a_token_read_before_a_change_was_applied_is_cached_unconfirmed() {
        let cache = cache();
        cache.sync().confirm(Instant::now());
        let alice = user_key("alice");
        let read_at = cache.sync().stamp();
        // Alice's credential is deleted and announced between the read and the caching.
        cache.apply(&credential_change("alice", None));
        let mut token = token(600, 0, 0);
        token.credential = version(1, 1);
        cache.insert(alice.clone(), Arc::new(token), read_at);
        let token = cache.get(&alice, 0, NOW).unwrap();
        assert!(!cache.trusts(&token), "its first hit asks the database");
    }
}
