//! The broker: the cache and the refresh actors, for the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::cache::TokenCache;
use super::lease::caller_deadline;
use super::owner::LeaseOwner;
use super::refresh::{Obtain, RefreshActor, RefreshAheadPolicy};
use super::sync::SyncState;
use super::{AccessToken, Subject, TokenError, TokenKey};
use crate::actors::audit::AuditTrail;
use crate::actors::db::{Database, DbOperation};
use crate::db::{ChangeBatch, ChangeKind, DbError};
use crate::domain::audit::Origin;
use crate::domain::unix_now;
use crate::idp::{IdpClient, IdpError};
use crate::metrics::Metrics;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ActorKey {
    Credential { user_id: String, provider: String },
    Client(TokenKey),
}

/// The cache and the actors, for the request path.
pub(crate) struct TokenBroker {
    database: Database,
    cache: Arc<TokenCache>,
    actors: Mutex<HashMap<ActorKey, Addr<RefreshActor>>>,
    idle_timeout: Duration,
    refresh_ahead: Option<RefreshAheadPolicy>,
    /// This process, as the owner of refresh leases.
    owner: LeaseOwner,
    /// [`LeaseOwner::id`], as the leases record it.
    lease_owner: Arc<str>,
    /// Replicas share the database (PostgreSQL, MariaDB): leases and client tokens go through it.
    shared_database: bool,
    metrics: Arc<Metrics>,
    audit: AuditTrail,
}

/// The cache's side of the change feed (see `actors::change_feed`): applies what the database
/// announces.
#[derive(Clone)]
pub(crate) struct CacheSync {
    cache: Arc<TokenCache>,
    metrics: Arc<Metrics>,
}

impl CacheSync {
    /// Applies one read of the change stream: a gap first, then its changes, then how far it
    /// is complete.
    pub(crate) fn apply(&self, batch: &ChangeBatch) {
        let sync = self.cache.sync();
        if batch.gap {
            sync.gap();
            self.metrics.change_feed_gaps.inc();
        }
        for change in &batch.changes {
            self.cache.apply(change);
            let kind = match change.kind {
                ChangeKind::Credential => "user",
                ChangeKind::Client => "client",
            };
            self.metrics
                .changes_applied
                .with_label_values(&[kind])
                .inc();
        }
        if let Some(as_of) = batch.complete_as_of {
            sync.confirm(as_of);
        }
    }

    pub(crate) fn state(&self) -> &SyncState {
        self.cache.sync()
    }
}

impl TokenBroker {
    pub(crate) fn new(
        database: Database,
        idle_timeout: Duration,
        shared_database: bool,
        max_staleness: Duration,
        refresh_ahead: Option<RefreshAheadPolicy>,
        audit_enabled: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let owner = LeaseOwner::this_process(shared_database);
        let lease_owner: Arc<str> = owner.id().into();
        Self {
            audit: AuditTrail::new(
                database.clone(),
                lease_owner.clone(),
                audit_enabled,
                metrics.clone(),
            ),
            database,
            cache: Arc::new(TokenCache::new(SyncState::new(max_staleness))),
            actors: Mutex::default(),
            idle_timeout,
            refresh_ahead,
            lease_owner,
            owner,
            shared_database,
            metrics,
        }
    }

    /// This process's audit trail.
    pub(crate) fn audit(&self) -> &AuditTrail {
        &self.audit
    }

    /// How far the cache is in step with the database's announced changes.
    pub(crate) fn sync_state(&self) -> &SyncState {
        self.cache.sync()
    }

    /// The cache's side of the change feed.
    pub(crate) fn cache_sync(&self) -> CacheSync {
        CacheSync {
            cache: self.cache.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// This process as the owner of refresh leases; on a shared database it must hold its
    /// liveness lock under this name before it takes any.
    pub(crate) fn lease_owner(&self) -> &str {
        &self.lease_owner
    }

    /// Voids the refresh leases of processes that are gone (see [`LeaseOwner::is_gone`]): a
    /// restart after `kill -9` serves their credentials at once instead of after the expiry.
    pub(crate) async fn void_leases_of_gone_processes(&self) -> Result<usize, DbError> {
        let owner = self.owner.clone();
        let sole_server = !self.shared_database;
        self.database
            .run(DbOperation::VoidLeases, move |store, conn| {
                let gone: Vec<String> = store
                    .lease_owners(conn)?
                    .into_iter()
                    .filter(|other| owner.is_gone(other, sole_server))
                    .collect();
                if gone.is_empty() {
                    return Ok(0);
                }
                store.void_leases(conn, &gone)
            })
            .await
    }

    /// A token for `key`: from the cache when one lives long enough, else from the key's actor;
    /// with where it came from for this call.
    pub(crate) async fn obtain(
        &self,
        idp: &Arc<IdpClient>,
        key: TokenKey,
        required_time_left: i64,
    ) -> Result<(Arc<AccessToken>, Origin), TokenError> {
        let kind = match key.subject {
            Subject::User(_) => "user",
            Subject::Client => "client",
        };
        if let Some(token) = self.cache.get(&key, required_time_left, unix_now()) {
            if self.still_current(&key, &token).await? {
                self.metrics
                    .token_cache_lookups
                    .with_label_values(&[kind, "hit"])
                    .inc();
                token.note_asked(required_time_left);
                return Ok((token, Origin::Cache));
            }
            self.cache.forget(&key);
        }
        self.metrics
            .token_cache_lookups
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
        tokio::time::timeout(caller_deadline(idp.as_ref()), from_actor)
            .await
            .unwrap_or_else(|_| {
                Err(TokenError::Idp(IdpError::Unavailable {
                    idp: provider,
                    reason: "timed out".into(),
                }))
            })
    }

    /// Forgets every cached token of a user (after updateToken or deleteToken).
    pub(crate) fn forget_user(&self, user_id: &str) {
        self.cache.forget_user(user_id);
    }

    /// Whether a cached user token's credential is unchanged (not replaced, deleted or refreshed
    /// by another replica or a command-line writer). Trusted without a database round trip while
    /// the change feed is in step (see `sync`); else asked of the database, and while that does
    /// not answer, served unconfirmed for `MaxStaleness` after its last answer: a hung database
    /// commits no change, and what a replica cut off from a working one misses is bounded.
    async fn still_current(
        &self,
        key: &TokenKey,
        token: &Arc<AccessToken>,
    ) -> Result<bool, TokenError> {
        let Subject::User(user_id) = &key.subject else {
            return Ok(true);
        };
        if self.cache.trusts(token) {
            return Ok(true);
        }
        if self.database.unanswered_for().is_some() {
            // Queueing behind operations the database does not answer would only add the
            // deadline to every hit.
            return self.serve_unconfirmed();
        }
        let checked_at = self.cache.sync().stamp();
        let (user_id, provider) = (user_id.clone(), key.provider.clone());
        let version = self
            .database
            .run(DbOperation::CredentialVersion, move |store, conn| {
                store.credential_version(conn, &user_id, &provider)
            })
            .await;
        match version {
            Ok(version) => {
                let current = version == token.credential;
                if current {
                    self.cache.confirmed(key, token, checked_at);
                }
                Ok(current)
            }
            Err(DbError::Timeout { .. }) => self.serve_unconfirmed(),
            Err(error) => Err(error.into()),
        }
    }

    fn serve_unconfirmed(&self) -> Result<bool, TokenError> {
        if self.database.last_answer_age() > self.cache.sync().bound() {
            return Err(TokenError::Storage);
        }
        self.metrics.token_cache_unconfirmed_hits.inc();
        Ok(true)
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
                    metrics: self.metrics.clone(),
                    audit: self.audit.clone(),
                    last_used: Instant::now(),
                    idle_timeout: self.idle_timeout,
                    refresh_ahead: self.refresh_ahead,
                    planned: HashMap::new(),
                }
                .start()
            })
            .clone()
    }
}
