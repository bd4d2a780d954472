//! The refresh actor: one per stored credential (user, provider) or client-token key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::cache::TokenCache;
use super::lease::{Replica, refresh_user_token, shared_client_token};
use super::{AccessToken, TokenError, TokenKey};
use crate::actors::audit::AuditTrail;
use crate::actors::db::Database;
use crate::domain::audit::Origin;
use crate::domain::unix_now;
use crate::idp::IdpClient;
use crate::metrics::Metrics;

/// A request to a refresh actor.
pub(super) struct Obtain {
    pub(super) key: TokenKey,
    pub(super) required_time_left: i64,
    /// When the caller queued: a token minted after that was obtained for it, whatever its life.
    pub(super) queued: Instant,
}

impl Message for Obtain {
    /// The token, and where it came from for this caller.
    type Result = Result<(Arc<AccessToken>, Origin), TokenError>;
}

/// Obtains its key's tokens one exchange at a time; stops itself when idle.
pub(super) struct RefreshActor {
    pub(super) user_id: Option<String>,
    pub(super) lease_owner: Arc<str>,
    /// Client tokens go through the database's shared row (replicas on PostgreSQL, MariaDB).
    pub(super) shared_database: bool,
    pub(super) idp: Arc<IdpClient>,
    pub(super) database: Database,
    pub(super) cache: Arc<TokenCache>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) audit: AuditTrail,
    pub(super) last_used: Instant,
    pub(super) idle_timeout: Duration,
}

impl Actor for RefreshActor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        self.metrics
            .refresh_actors
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
        self.metrics
            .refresh_actors
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
    type Result = AtomicResponse<Self, Result<(Arc<AccessToken>, Origin), TokenError>>;

    fn handle(&mut self, request: Obtain, _: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        // Before anything is read: a change applied after it may be one the reads missed.
        let read_at = self.cache.sync().stamp();
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
            self.metrics
                .coalesced_callers
                .with_label_values(&[self.kind()])
                .inc();
            return AtomicResponse::new(Box::pin(fut::ready(Ok((token, Origin::Cache)))));
        }
        let (idp, database, cache) = (self.idp.clone(), self.database.clone(), self.cache.clone());
        let user_id = self.user_id.clone();
        let (lease_owner, metrics) = (self.lease_owner.clone(), self.metrics.clone());
        let audit = self.audit.clone();
        let shared_database = self.shared_database;
        AtomicResponse::new(Box::pin(
            async move {
                let replica = Replica {
                    lease_owner: &lease_owner,
                    metrics: &metrics,
                    audit: Some(&audit),
                };
                let token = match &user_id {
                    Some(user_id) => {
                        refresh_user_token(
                            idp.as_ref(),
                            &database,
                            &replica,
                            user_id,
                            &request.key,
                            request.required_time_left,
                        )
                        .await?
                    }
                    None if shared_database => {
                        shared_client_token(
                            idp.as_ref(),
                            &database,
                            &replica,
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
                let origin = token.origin;
                let token = Arc::new(token);
                cache.insert(request.key, token.clone(), read_at);
                Ok((token, origin))
            }
            .into_actor(self),
        ))
    }
}
