//! The token path: an access-token cache in front of one refresh actor per stored credential and
//! one per client-token key. An actor's handler is atomic, so one IdP exchange per key is in
//! flight; callers queued behind it are answered from its result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::db::{Database, GetCredential, MarkNeedsRedelegation, StoreRefreshed};
use crate::db::{CredentialVersion, DbError, StoredToken, TokenUpdate};
use crate::domain::scopes::ScopeSet;
use crate::domain::{CredentialState, Secret, unix_now};
use crate::idp::{IdpClient, IdpError, IssuedToken};

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
            .retain(|key, _| key.subject != Subject::User(user_id.to_owned()));
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    idp: Arc<IdpClient>,
    database: Database,
    cache: Arc<TokenCache>,
    last_used: Instant,
    idle_timeout: Duration,
}

impl Actor for RefreshActor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        let period = (self.idle_timeout / 2).max(Duration::from_millis(50));
        context.run_interval(period, |actor, context| {
            if actor.last_used.elapsed() >= actor.idle_timeout {
                context.stop();
            }
        });
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
            return AtomicResponse::new(Box::pin(fut::ready(Ok(token))));
        }
        let (idp, database, cache) = (self.idp.clone(), self.database.clone(), self.cache.clone());
        let user_id = self.user_id.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let token = match &user_id {
                    Some(user_id) => {
                        refresh_user_token(
                            &idp,
                            &database,
                            user_id,
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

/// Refreshes a stored credential and stores the (rotated) refresh token, compare-and-set on the
/// row's generation, before the access token is handed out.
async fn refresh_user_token(
    idp: &IdpClient,
    database: &Database,
    user_id: &str,
    key: &TokenKey,
    required_time_left: i64,
) -> Result<AccessToken, TokenError> {
    let provider = key.provider.clone();
    let stored = database
        .call(GetCredential {
            user_id: user_id.to_owned(),
            provider: provider.clone(),
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
    match idp
        .refresh(&stored.refresh_token, &key.scopes, key.audience.as_deref())
        .await
    {
        Ok(issued) => {
            let now = unix_now();
            let token = AccessToken::from_issued(&issued, &key.scopes, required_time_left, now);
            store_refreshed(database, &stored, &issued, &token, key, now).await?;
            Ok(token)
        }
        Err(error @ (IdpError::InvalidGrant(_) | IdpError::ReplyLost { .. })) => {
            // The refresh token is dead (refused) or possibly consumed (reply lost): presenting
            // it again would at best fail, at worst make the IdP revoke the whole grant.
            tracing::warn!(user_id, provider, %error, "credential needs a new login");
            let version = stored.version();
            if let Err(mark) = database
                .call(MarkNeedsRedelegation {
                    expected: version,
                    now: unix_now(),
                })
                .await
            {
                tracing::error!(user_id, provider, error = %mark, "could not mark the credential");
            }
            Err(match error {
                IdpError::InvalidGrant(_) => TokenError::Idp(error),
                _ => TokenError::NeedsRedelegation {
                    user_id: user_id.to_owned(),
                    provider,
                },
            })
        }
        Err(error) => Err(error.into()),
    }
}

async fn store_refreshed(
    database: &Database,
    stored: &StoredToken,
    issued: &IssuedToken,
    token: &AccessToken,
    key: &TokenKey,
    now: i64,
) -> Result<(), TokenError> {
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
    let write = StoreRefreshed {
        expected: CredentialVersion {
            id: stored.id,
            generation: stored.generation,
        },
        user_id: stored.user_id.clone(),
        provider: stored.provider.clone(),
        update,
        now,
    };
    database.call(write).await.map(|_| ()).map_err(|error| {
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
}

impl TokenBroker {
    pub fn new(database: Database, idle_timeout: Duration) -> Self {
        Self {
            database,
            cache: Arc::default(),
            actors: Mutex::default(),
            idle_timeout,
        }
    }

    /// A token for `key`: from the cache when one lives long enough, else from the key's actor.
    pub async fn obtain(
        &self,
        idp: &Arc<IdpClient>,
        key: TokenKey,
        required_time_left: i64,
    ) -> Result<Arc<AccessToken>, TokenError> {
        if let Some(token) = self.cache.get(&key, required_time_left, unix_now()) {
            return Ok(token);
        }
        let queued = Instant::now();
        let actor = self.actor_for(idp, &key);
        let request = Obtain {
            key,
            required_time_left,
            queued,
        };
        match actor.send(request).await {
            Ok(result) => result,
            // The actor stopped for idleness between lookup and send: never a token lost.
            Err(_) => Err(TokenError::Storage),
        }
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

    /// Live refresh actors.
    pub fn actor_count(&self) -> usize {
        let mut actors = self.actors.lock().unwrap_or_else(|e| e.into_inner());
        actors.retain(|_, addr| addr.connected());
        actors.len()
    }
}
