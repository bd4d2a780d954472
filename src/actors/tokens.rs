//! The token path: an access-token cache in front of one refresh actor per stored credential and
//! one per client-token key. An actor's handler is atomic, so one IdP exchange per key is in
//! flight; callers queued behind it are answered from its result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::db::{Database, DbOperation};
use crate::db::{ClientTokenKey, CredentialVersion, DbError, StoredToken, TokenUpdate};
use crate::domain::scopes::ScopeSet;
use crate::domain::{CredentialState, Secret, unix_now};
use crate::idp::{IdpClient, IdpError, IssuedToken};
use crate::metrics;

/// Whose token: a stored user credential, or DIRAC's own client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    User(String),
    Client,
}

/// Everything that makes two access tokens different.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub subject: Subject,
    pub provider: String,
    pub client_id: String,
    pub scopes: ScopeSet,
    pub audience: Option<String>,
}

/// An access token the service holds.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_at: i64,
    /// What the IdP granted (the request's scopes when it did not say).
    pub scope: ScopeSet,
    minted: Instant,
    /// The lifetime the IdP gave it.
    lifetime: i64,
    /// The `requiredTimeLeft` of the request that had it minted.
    minted_for: i64,
    /// The stored credential it came from (user tokens).
    credential: Option<CredentialVersion>,
}

impl AccessToken {
    fn from_issued(issued: &IssuedToken, requested: &ScopeSet, minted_for: i64, now: i64) -> Self {
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

    pub fn seconds_left(&self, now: i64) -> i64 {
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

/// Why no token could be had; the message is what callers see.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("No token found for {0}")]
    NoCredential(String),
    #[error(
        "The stored token of {user_id} at {provider} was refused by the IdP; a new login (updateToken) is needed"
    )]
    NeedsRedelegation { user_id: String, provider: String },
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

/// Access tokens by key. Entries are served only while they live long enough for the request.
#[derive(Default)]
pub struct TokenCache {
    entries: RwLock<HashMap<TokenKey, Arc<AccessToken>>>,
}

impl TokenCache {
    pub fn get(
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

    fn minted_since(&self, key: &TokenKey, since: Instant, now: i64) -> Option<Arc<AccessToken>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|t| t.minted >= since && t.seconds_left(now) > 0)
            .cloned()
    }

    fn forget(&self, key: &TokenKey) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn insert(&self, key: TokenKey, token: Arc<AccessToken>) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, token);
    }

    /// Forgets every token of a user (after updateToken or deleteToken).
    pub fn forget_user(&self, user_id: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| !matches!(&key.subject, Subject::User(id) if id == user_id));
    }
}

/// A request to a refresh actor.
struct Obtain {
    key: TokenKey,
    required_time_left: i64,
    /// When the caller queued: a token minted after that was obtained for it, whatever its life.
    queued: Instant,
}

impl Message for Obtain {
    type Result = Result<Arc<AccessToken>, TokenError>;
}

/// One per stored credential (user, provider) or client-token key; stops itself when idle.
struct RefreshActor {
    user_id: Option<String>,
    lease_owner: Arc<str>,
    /// Client tokens go through the database's shared row (replicas on PostgreSQL, MariaDB).
    shared_database: bool,
    idp: Arc<IdpClient>,
    database: Database,
    cache: Arc<TokenCache>,
    last_used: Instant,
    idle_timeout: Duration,
}

impl Actor for RefreshActor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        metrics::REFRESH_ACTORS
            .with_label_values(&[self.kind()])
            .inc();
        let period = (self.idle_timeout / 2).max(Duration::from_millis(50));
        context.run_interval(period, |actor, context| {
            if actor.last_used.elapsed() >= actor.idle_timeout {
                context.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::REFRESH_ACTORS
            .with_label_values(&[self.kind()])
            .dec();
    }
}

impl RefreshActor {
    fn kind(&self) -> &'static str {
        if self.user_id.is_some() {
            "user"
        } else {
            "client"
        }
    }
}

impl Handler<Obtain> for RefreshActor {
    type Result = AtomicResponse<Self, Result<Arc<AccessToken>, TokenError>>;

    fn handle(&mut self, request: Obtain, _: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        let now = unix_now();
        // Queued behind the refresh that just ran: its result is the answer, even if it lives
        // less than asked (the IdP cannot give more, and a queue must not cause a second refresh).
        let ready = self
            .cache
            .minted_since(&request.key, request.queued, now)
            .or_else(|| {
                self.cache
                    .get(&request.key, request.required_time_left, now)
            });
        if let Some(token) = ready {
            metrics::COALESCED_CALLERS
                .with_label_values(&[self.kind()])
                .inc();
            return AtomicResponse::new(Box::pin(fut::ready(Ok(token))));
        }
        let (idp, database, cache) = (self.idp.clone(), self.database.clone(), self.cache.clone());
        let user_id = self.user_id.clone();
        let lease_owner = self.lease_owner.clone();
        let shared_database = self.shared_database;
        AtomicResponse::new(Box::pin(
            async move {
                let token = match &user_id {
                    Some(user_id) => {
                        refresh_user_token(
                            &idp,
                            &database,
                            &lease_owner,
                            user_id,
                            &request.key,
                            request.required_time_left,
                        )
                        .await?
                    }
                    None if shared_database => {
                        shared_client_token(
                            &idp,
                            &database,
                            &lease_owner,
                            &request.key,
                            request.required_time_left,
                        )
                        .await?
                    }
                    None => {
                        let issued = idp
                            .client_credentials(
                                &request.key.scopes,
                                request.key.audience.as_deref(),
                            )
                            .await?;
                        AccessToken::from_issued(
                            &issued,
                            &request.key.scopes,
                            request.required_time_left,
                            unix_now(),
                        )
                    }
                };
                let token = Arc::new(token);
                cache.insert(request.key, token.clone());
                Ok(token)
            }
            .into_actor(self),
        ))
    }
}

/// How long a caller waits for a token from a key's actor: the IdP's `timeout`, and a second
/// for storing what a refresh obtained just before it. A refresh that outlasts it is late.
fn caller_deadline(idp: &IdpClient) -> Duration {
    idp.options().timeout + Duration::from_secs(1)
}

/// How often a replica that meets another's live lease looks at the row again.
const LEASE_POLL: Duration = Duration::from_millis(50);

/// Refreshes a stored credential, under the row's lease, and stores the (rotated) refresh token,
/// compare-and-set on the row's generation, before the access token is handed out. A replica
/// that meets another's live lease waits and serves the result that replica stores.
async fn refresh_user_token(
    idp: &IdpClient,
    database: &Database,
    lease_owner: &str,
    user_id: &str,
    key: &TokenKey,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    let provider = key.provider.clone();
    // Longer than any refresh can hold the lease: the IdP call is bounded by its timeout and the
    // wait for a late reply.
    let lease_seconds = idp.options().refresh_timeout().as_secs() as i64 + 5;
    let give_up = Instant::now() + Duration::from_secs(lease_seconds as u64 * 2);
    let mut first_seen: Option<CredentialVersion> = None;
    loop {
        let (user, at) = (user_id.to_owned(), provider.clone());
        let stored = database
            .run(DbOperation::Credential, move |store, conn| {
                store.credential(conn, &user, &at)
            })
            .await?
            .filter(|t| t.rt_expires_at > unix_now())
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
        if let Some(token) = stored_access_token(&stored, key, required_time_left, peer_refreshed) {
            if peer_refreshed {
                metrics::COALESCED_CALLERS
                    .with_label_values(&["user"])
                    .inc();
            }
            return Ok(token);
        }
        first_seen.get_or_insert(stored.version());
        let now = unix_now();
        let (version, owner) = (stored.version(), lease_owner.to_owned());
        let lease = database.run(DbOperation::TakeLease, move |store, conn| {
            store.take_lease(conn, version, &owner, now, now + lease_seconds)
        });
        if lease.await? {
            return refresh_under_lease(
                idp,
                database,
                lease_owner,
                lease_seconds,
                stored,
                key,
                required_time_left,
            )
            .await;
        }
        if Instant::now() >= give_up {
            return Err(TokenError::Idp(IdpError::Unavailable {
                idp: provider,
                reason: "another replica's refresh of this credential did not finish".into(),
            }));
        }
        tokio::time::sleep(LEASE_POLL).await;
    }
}

/// The key of a client token's shared row: a digest of everything that makes the token.
fn client_token_key(key: &TokenKey) -> ClientTokenKey {
    let material = format!(
        "{}\n{}\n{}\n{}",
        key.provider,
        key.client_id,
        key.scopes,
        key.audience.as_deref().unwrap_or_default()
    );
    let digest = openssl::sha::sha256(material.as_bytes());
    ClientTokenKey {
        token_key: digest.iter().map(|b| format!("{b:02x}")).collect(),
        provider: key.provider.clone(),
        scope: key.scopes.to_string(),
        audience: key.audience.clone(),
    }
}

/// A client token through the database's shared row: served from it when it lives long enough
/// (or another replica just obtained it), else obtained under the row's lease and stored.
async fn shared_client_token(
    idp: &IdpClient,
    database: &Database,
    lease_owner: &str,
    key: &TokenKey,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    let row_key = client_token_key(key);
    let lease_seconds = idp.options().timeout.as_secs() as i64 + 5;
    let give_up = Instant::now() + Duration::from_secs(lease_seconds as u64 * 2);
    let mut first_seen: Option<CredentialVersion> = None;
    loop {
        let (key_of_row, now) = (row_key.clone(), unix_now());
        let row = database
            .run(DbOperation::ClientToken, move |store, conn| {
                store.client_token(conn, &key_of_row, now)
            })
            .await?;
        let peer_obtained = first_seen.is_some_and(|seen| seen != row.version);
        let left = row.expires_at - unix_now();
        if let Some(access_token) = row.access_token.clone()
            && left > 0
            && (peer_obtained || left >= required_time_left)
        {
            if peer_obtained {
                metrics::COALESCED_CALLERS
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
                credential: None,
            });
        }
        first_seen.get_or_insert(row.version);
        let now = unix_now();
        let (version, owner) = (row.version, lease_owner.to_owned());
        let lease = database.run(DbOperation::TakeClientLease, move |store, conn| {
            store.take_client_lease(conn, version, &owner, now, now + lease_seconds)
        });
        if lease.await? {
            let issued = match idp
                .client_credentials(&key.scopes, key.audience.as_deref())
                .await
            {
                Ok(issued) => issued,
                Err(error) => {
                    let (id, owner) = (row.version.id, lease_owner.to_owned());
                    let release = database
                        .run(DbOperation::ReleaseClientLease, move |store, conn| {
                            store.release_client_lease(conn, id, &owner)
                        });
                    if let Err(release_error) = release.await {
                        tracing::warn!(error = %release_error, "could not release a client-token lease; it expires by itself");
                    }
                    return Err(error.into());
                }
            };
            let now = unix_now();
            let token = AccessToken::from_issued(&issued, &key.scopes, required_time_left, now);
            let (key_of_row, expected) = (row_key.clone(), row.version);
            let (access_token, token_type) = (token.access_token.clone(), token.token_type.clone());
            let (expires_at, expires_in) = (token.expires_at, issued.expires_in.unwrap_or(0));
            let granted_scope = token.scope.to_string();
            let write = database.run(DbOperation::StoreClientToken, move |store, conn| {
                store.store_client_token(
                    conn,
                    &key_of_row,
                    expected,
                    &access_token,
                    &token_type,
                    expires_at,
                    expires_in,
                    &granted_scope,
                    now,
                )
            });
            // A client token can be obtained again: not storing it costs peers a refresh, no more.
            if let Err(error) = write.await {
                tracing::warn!(%error, "could not share a client token with the other replicas");
            }
            return Ok(token);
        }
        if Instant::now() >= give_up {
            return Err(TokenError::Idp(IdpError::Unavailable {
                idp: key.provider.clone(),
                reason: "another replica's client-token request did not finish".into(),
            }));
        }
        tokio::time::sleep(LEASE_POLL).await;
    }
}

/// The access token stored with the credential, if it is one for this key: same audience, the
/// requested scopes granted, alive (and long enough, unless a peer just obtained it for us).
fn stored_access_token(
    stored: &StoredToken,
    key: &TokenKey,
    required_time_left: i64,
    peer_refreshed: bool,
) -> Option<AccessToken> {
    let access_token = stored.access_token.clone()?;
    let granted = ScopeSet::parse(&stored.scope);
    let now = unix_now();
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
    })
}

async fn refresh_under_lease(
    idp: &IdpClient,
    database: &Database,
    lease_owner: &str,
    lease_seconds: i64,
    stored: StoredToken,
    key: &TokenKey,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    let (user_id, provider) = (stored.user_id.clone(), stored.provider.clone());
    let renew = async {
        loop {
            tokio::time::sleep(Duration::from_secs((lease_seconds / 3).max(1) as u64)).await;
            let now = unix_now();
            let (version, owner) = (stored.version(), lease_owner.to_owned());
            let lease = database.run(DbOperation::TakeLease, move |store, conn| {
                store.take_lease(conn, version, &owner, now, now + lease_seconds)
            });
            if !matches!(lease.await, Ok(true)) {
                tracing::warn!(user_id, provider, "could not renew the refresh lease");
            }
        }
    };
    let started = Instant::now();
    let refreshed = tokio::select! {
        refreshed = idp.refresh(&stored.refresh_token, &key.scopes, key.audience.as_deref()) => refreshed,
        never = renew => never,
    };
    let late = started.elapsed() > caller_deadline(idp);
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
            let now = unix_now();
            let mut token = AccessToken::from_issued(&issued, &key.scopes, required_time_left, now);
            // Stored before it is handed out; the write also ends the lease.
            let version = store_refreshed(database, &stored, &issued, &token, key, now).await?;
            token.credential = Some(version);
            return Ok(token);
        }
        Err(error @ (IdpError::InvalidGrant(_) | IdpError::ReplyLost { .. })) => {
            // The refresh token is dead (refused) or possibly consumed (reply lost): presenting
            // it again would at best fail, at worst make the IdP revoke the whole grant.
            tracing::warn!(user_id, provider, %error, "credential needs a new login");
            let (expected, now) = (stored.version(), unix_now());
            let mark = database.run(DbOperation::MarkNeedsRedelegation, move |store, conn| {
                store.mark_needs_redelegation(conn, expected, now)
            });
            if let Err(mark) = mark.await {
                tracing::error!(user_id, provider, error = %mark, "could not mark the credential");
            }
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
    let (id, owner) = (stored.id, lease_owner.to_owned());
    let release = database.run(DbOperation::ReleaseLease, move |store, conn| {
        store.release_lease(conn, id, &owner)
    });
    if let Err(error) = release.await {
        tracing::warn!(user_id, provider, %error, "could not release the refresh lease; it expires by itself");
    }
    outcome
}

async fn store_refreshed(
    database: &Database,
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
    let expected = stored.version();
    let (user_id, provider) = (stored.user_id.clone(), stored.provider.clone());
    let write = database.run(DbOperation::StoreRefreshed, move |store, conn| {
        store.store_refreshed(conn, expected, &user_id, &provider, &update, now)
    });
    write.await.map(|row| row.version()).map_err(|error| {
        metrics::REFRESH_TOKEN_PERSIST_FAILURES.inc();
        tracing::error!(
            user_id = %stored.user_id, provider = %stored.provider, %error,
            "REFRESHED TOKEN NOT STORED: the IdP rotated the refresh token but the new one could not be saved"
        );
        TokenError::NotStored
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ActorKey {
    Credential { user_id: String, provider: String },
    Client(TokenKey),
}

/// The cache and the actors, for the request path.
pub struct TokenBroker {
    database: Database,
    pub cache: Arc<TokenCache>,
    actors: Mutex<HashMap<ActorKey, Addr<RefreshActor>>>,
    idle_timeout: Duration,
    /// This process, as the owner of refresh leases.
    lease_owner: Arc<str>,
    /// Other replicas may change credentials (PostgreSQL, MariaDB): a cached user token is served
    /// only while its credential's version is still the stored one.
    shared_database: bool,
}

impl TokenBroker {
    pub fn new(database: Database, idle_timeout: Duration, shared_database: bool) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let lease_owner = format!("{}:{}:{started:x}", host.trim(), std::process::id());
        Self {
            database,
            cache: Arc::default(),
            actors: Mutex::default(),
            idle_timeout,
            lease_owner: lease_owner.into(),
            shared_database,
        }
    }

    /// A token for `key`: from the cache when one lives long enough, else from the key's actor.
    pub async fn obtain(
        &self,
        idp: &Arc<IdpClient>,
        key: TokenKey,
        required_time_left: i64,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let kind = match key.subject {
            Subject::User(_) => "user",
            Subject::Client => "client",
        };
        if let Some(token) = self.cache.get(&key, required_time_left, unix_now()) {
            if self.still_current(&key, &token).await? {
                metrics::TOKEN_CACHE_LOOKUPS
                    .with_label_values(&[kind, "hit"])
                    .inc();
                return Ok(token);
            }
            self.cache.forget(&key);
        }
        metrics::TOKEN_CACHE_LOOKUPS
            .with_label_values(&[kind, "miss"])
            .inc();
        let queued = Instant::now();
        let provider = key.provider.clone();
        let from_actor = async {
            // An actor that stopped for idleness between lookup and send is replaced once.
            for _ in 0..2 {
                let actor = self.actor_for(idp, &key);
                let request = Obtain {
                    key: key.clone(),
                    required_time_left,
                    queued,
                };
                if let Ok(result) = actor.send(request).await {
                    return result;
                }
            }
            Err(TokenError::Storage)
        };
        // The caller's deadline, not the refresh's: a refresh still waiting for a late reply goes
        // on (and stores what it gets); a request still queued for the actor is dropped unread.
        tokio::time::timeout(caller_deadline(idp), from_actor)
            .await
            .unwrap_or_else(|_| {
                Err(TokenError::Idp(IdpError::Unavailable {
                    idp: provider,
                    reason: "timed out".into(),
                }))
            })
    }

    /// On a shared database, whether a cached user token's credential is unchanged (not
    /// replaced, deleted or refreshed by another replica).
    async fn still_current(&self, key: &TokenKey, token: &AccessToken) -> Result<bool, TokenError> {
        let Subject::User(user_id) = &key.subject else {
            return Ok(true);
        };
        if !self.shared_database {
            return Ok(true);
        }
        let (user_id, provider) = (user_id.clone(), key.provider.clone());
        let version = self
            .database
            .run(DbOperation::CredentialVersion, move |store, conn| {
                store.credential_version(conn, &user_id, &provider)
            })
            .await?;
        Ok(version == token.credential)
    }

    fn actor_for(&self, idp: &Arc<IdpClient>, key: &TokenKey) -> Addr<RefreshActor> {
        let actor_key = match &key.subject {
            Subject::User(user_id) => ActorKey::Credential {
                user_id: user_id.clone(),
                provider: key.provider.clone(),
            },
            Subject::Client => ActorKey::Client(key.clone()),
        };
        let mut actors = self.actors.lock().unwrap_or_else(|e| e.into_inner());
        actors.retain(|_, addr| addr.connected());
        actors
            .entry(actor_key)
            .or_insert_with(|| {
                RefreshActor {
                    user_id: match &key.subject {
                        Subject::User(user_id) => Some(user_id.clone()),
                        Subject::Client => None,
                    },
                    lease_owner: self.lease_owner.clone(),
                    shared_database: self.shared_database,
                    idp: idp.clone(),
                    database: self.database.clone(),
                    cache: self.cache.clone(),
                    last_used: Instant::now(),
                    idle_timeout: self.idle_timeout,
                }
                .start()
            })
            .clone()
    }
}
