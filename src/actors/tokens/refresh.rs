//! The refresh actor: one per stored credential (user, provider) or client-token key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::cache::TokenCache;
use super::exchange::user_token;
use super::lease::{Replica, shared_client_token};
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
    /// Background refreshes of hot keys; none when `RefreshAhead = no`.
    pub(super) refresh_ahead: Option<RefreshAheadPolicy>,
    /// The token of each key whose background refresh is planned.
    pub(super) planned: HashMap<TokenKey, Arc<AccessToken>>,
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
            // Hits do not reach the actor: a key asked for lately keeps it (and its planned
            // background refresh).
            let since = unix_now() - actor.idle_timeout.as_secs() as i64;
            let hot = actor
                .planned
                .values()
                .any(|token| token.asked_since(since).is_some());
            if actor.last_used.elapsed() >= actor.idle_timeout && !hot {
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
            token.note_asked(request.required_time_left);
            self.metrics
                .coalesced_callers
                .with_label_values(&[self.kind()])
                .inc();
            return AtomicResponse::new(Box::pin(fut::ready(Ok((token, Origin::Cache)))));
        }
        let key = request.key.clone();
        AtomicResponse::new(Box::pin(
            self.obtain(request.key, request.required_time_left)
                .into_actor(self)
                .map(move |result, actor, context| {
                    if let Ok(token) = &result {
                        actor.plan_refresh_ahead(key, token.clone(), context);
                    }
                    result.map(|token| {
                        let origin = token.origin;
                        (token, origin)
                    })
                }),
        ))
    }
}

/// A background refresh of `key`, whose cached token is `token`: due when its lifetime is
/// nearly over, done only if callers asked for it since it was minted.
struct RefreshAhead {
    key: TokenKey,
    token: Arc<AccessToken>,
    /// Failed attempts so far, for the back-off.
    attempt: u32,
}

impl Message for RefreshAhead {
    type Result = ();
}

impl Handler<RefreshAhead> for RefreshActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, ahead: RefreshAhead, context: &mut Context<Self>) -> Self::Result {
        let Some(policy) = self.refresh_ahead else {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        };
        let now = unix_now();
        // Replaced meanwhile (a caller's refresh, another replica's, a new login): the new
        // token has its own plan.
        if !self.cache.holds(&ahead.key, &ahead.token) || ahead.token.seconds_left(now) <= 0 {
            if self
                .planned
                .get(&ahead.key)
                .is_some_and(|planned| Arc::ptr_eq(planned, &ahead.token))
            {
                self.planned.remove(&ahead.key);
            }
            self.count_refresh_ahead("superseded");
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        // Hot: asked for within the last half of its lifetime.
        let Some(required) = ahead
            .token
            .asked_since(now - (ahead.token.lifetime / 2).max(1))
        else {
            // A cold key costs the IdP nothing.
            self.planned.remove(&ahead.key);
            self.count_refresh_ahead("cold");
            return AtomicResponse::new(Box::pin(fut::ready(())));
        };
        let due_in = policy.due_in(&ahead.token, required, now);
        if due_in > 0 {
            context.notify_later(ahead, Duration::from_secs(due_in as u64));
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        // A hot key keeps its actor.
        self.last_used = Instant::now();
        // Any token that outlives this one serves: one another replica stored just now, say.
        let wanted = ahead.token.seconds_left(now) + 1;
        let RefreshAhead {
            key,
            token,
            attempt,
        } = ahead;
        AtomicResponse::new(Box::pin(
            self.obtain(key.clone(), wanted)
                .into_actor(self)
                .map(move |result, actor, context| match result {
                    Ok(fresh) => {
                        actor.count_refresh_ahead("ok");
                        actor.plan_refresh_ahead(key, fresh, context);
                    }
                    Err(error) => {
                        actor.count_refresh_ahead("failed");
                        let retry = RefreshAhead::retry_delay(attempt);
                        let left = token.seconds_left(unix_now());
                        tracing::warn!(
                            %error,
                            provider = %key.provider,
                            retry_in = retry.as_secs(),
                            seconds_left = left,
                            "a background refresh failed; the current token stays in service"
                        );
                        if (retry.as_secs() as i64) < left {
                            context.notify_later(
                                RefreshAhead {
                                    key,
                                    token,
                                    attempt: attempt + 1,
                                },
                                retry,
                            );
                        }
                    }
                }),
        ))
    }
}

impl RefreshAhead {
    /// 2 s after the first failure, doubling up to a minute.
    fn retry_delay(attempt: u32) -> Duration {
        Duration::from_secs((2u64 << attempt.min(5)).min(60))
    }
}

/// When background refreshes run (`RefreshAhead`, `RefreshAheadPercent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RefreshAheadPolicy {
    /// Refresh when this share of the lifetime is left (percent), at least.
    pub(crate) percent_left: u32,
}

impl RefreshAheadPolicy {
    /// Seconds until `token`'s background refresh is due, when callers asked it for up to
    /// `required` seconds: when the larger of `percent_left` of its lifetime and `required` + 1 s
    /// is left (never earlier than half its lifetime), plus its jitter.
    fn due_in(&self, token: &AccessToken, required: i64, now: i64) -> i64 {
        let lifetime = token.lifetime.max(1);
        let share = lifetime * i64::from(self.percent_left) / 100;
        let refresh_when_left = share.max(required + 1).min(lifetime / 2) + token.jitter;
        token.seconds_left(now) - refresh_when_left
    }
}

impl RefreshActor {
    /// Plans `token`'s background refresh: first looked at when half its lifetime is left
    /// (then at its due time).
    fn plan_refresh_ahead(
        &mut self,
        key: TokenKey,
        token: Arc<AccessToken>,
        context: &mut Context<Self>,
    ) {
        if self.refresh_ahead.is_none() || token.lifetime <= 0 {
            return;
        }
        let first_look = token.seconds_left(unix_now()) - token.lifetime / 2;
        self.planned.insert(key.clone(), token.clone());
        context.notify_later(
            RefreshAhead {
                key,
                token,
                attempt: 0,
            },
            Duration::from_secs(first_look.max(0) as u64),
        );
    }

    fn count_refresh_ahead(&self, outcome: &str) {
        self.metrics
            .background_refreshes
            .with_label_values(&[self.kind(), outcome])
            .inc();
    }

    /// Obtains a token for `key` (through the lease protocol on a shared database) and caches
    /// it.
    fn obtain(
        &self,
        key: TokenKey,
        required_time_left: i64,
    ) -> impl Future<Output = Result<Arc<AccessToken>, TokenError>> + 'static {
        // Before anything is read: a change applied after it may be one the reads missed.
        let read_at = self.cache.sync().stamp();
        let (idp, database, cache) = (self.idp.clone(), self.database.clone(), self.cache.clone());
        let user_id = self.user_id.clone();
        let (lease_owner, metrics) = (self.lease_owner.clone(), self.metrics.clone());
        let audit = self.audit.clone();
        let shared_database = self.shared_database;
        async move {
            let replica = Replica {
                lease_owner: &lease_owner,
                metrics: &metrics,
                audit: Some(&audit),
            };
            let token = match &user_id {
                Some(user_id) => {
                    user_token(
                        idp.as_ref(),
                        &database,
                        &replica,
                        &cache,
                        read_at,
                        user_id,
                        &key,
                        required_time_left,
                    )
                    .await?
                }
                None if shared_database => {
                    shared_client_token(idp.as_ref(), &database, &replica, &key, required_time_left)
                        .await?
                }
                None => {
                    let issued = idp
                        .client_credentials(&key.scopes, key.audience.as_deref())
                        .await?;
                    AccessToken::from_issued(&issued, &key.scopes, required_time_left, unix_now())
                }
            };
            let token = Arc::new(token);
            cache.insert(key, token.clone(), read_at);
            Ok(token)
        }
    }
}
