//! The DB actor: the only code that holds the pool. It runs on a `SyncArbiter` (one thread per
//! pooled connection), because diesel is blocking; async code talks to it through [`Database`].
//!
//! Callers wait for an operation at most the database deadline: a hung database (a stopped
//! server, a stalled network) blocks the actor's threads, not the service. An operation whose
//! caller gave up is dropped before it runs, except the writes that must not be lost
//! ([`DbOperation::outlives_its_caller`]).

use actix::prelude::*;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::DatabaseUrl;
use crate::crypto::SharedKeyring;
use crate::db::{DbConn, DbError, DbPool, PoolOptions, TokenStore, build_pool, run_migrations};
pub use crate::metrics::DbOperation;
use crate::metrics::Metrics;

struct DbActor {
    pool: DbPool,
    store: TokenStore,
    metrics: Arc<Metrics>,
}

impl Actor for DbActor {
    type Context = SyncContext<Self>;
}

/// One store operation, run on the actor's thread with a pooled connection. Its result goes
/// back through `reply` rather than actix's own reply channel: actix silently skips a message
/// whose sender stopped waiting, and the writes that keep a grant must run all the same.
struct Run<F, T> {
    operation: DbOperation,
    work: F,
    /// When its caller stops waiting: past it, the operation is dropped unrun.
    deadline: Option<Instant>,
    reply: tokio::sync::oneshot::Sender<Result<T, DbError>>,
}

impl<F, T> Message for Run<F, T>
where
    F: FnOnce(&TokenStore, &mut DbConn) -> Result<T, DbError>,
    T: 'static,
{
    type Result = ();
}

impl<F, T> Handler<Run<F, T>> for DbActor
where
    F: FnOnce(&TokenStore, &mut DbConn) -> Result<T, DbError>,
    T: 'static,
{
    type Result = ();

    fn handle(&mut self, run: Run<F, T>, _: &mut SyncContext<Self>) {
        let started = Instant::now();
        let given_up =
            run.deadline.is_some_and(|deadline| started >= deadline) || run.reply.is_closed();
        if given_up && !run.operation.outlives_its_caller() {
            self.metrics.count_db_operation(run.operation, "expired");
            return;
        }
        let result = self
            .pooled_connection(run.operation)
            .and_then(|mut pooled| {
                self.metrics
                    .db_pool_wait
                    .observe(started.elapsed().as_secs_f64());
                (run.work)(&self.store, &mut pooled)
            });
        self.metrics
            .observe_db_operation(run.operation, result.is_ok(), started);
        // A caller that stopped waiting meanwhile has nothing to be told.
        let _ = run.reply.send(result);
    }
}

/// How long a write that keeps a grant keeps asking for a connection: a database that does not
/// answer for this long has lost more than one grant's worth of work.
const GRANT_WRITE_PATIENCE: Duration = Duration::from_secs(600);

impl DbActor {
    /// A pooled connection; for a write that keeps a grant, retried past the pool's own timeout
    /// (a new connection to a hung database times out, and the rotated refresh token exists
    /// nowhere else).
    fn pooled_connection(
        &self,
        operation: DbOperation,
    ) -> Result<r2d2::PooledConnection<crate::db::DbManager>, DbError> {
        let started = Instant::now();
        loop {
            match self.pool.get() {
                Ok(pooled) => return Ok(pooled),
                Err(error)
                    if operation.keeps_a_grant() && started.elapsed() < GRANT_WRITE_PATIENCE =>
                {
                    tracing::warn!(%error, operation = operation.name(), "no database connection for a write that keeps a grant; trying again");
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// The async face of the DB actor: what the rest of the service holds.
#[derive(Clone)]
pub struct Database {
    addr: Addr<DbActor>,
    pool: DbPool,
    metrics: Arc<Metrics>,
    deadline: Duration,
    answers: Arc<Answers>,
    /// The database's clock minus this host's, in seconds (0 until measured).
    clock_offset: Arc<AtomicI64>,
}

/// Whether the database answers: when it last did, and since when it has not.
#[derive(Debug)]
struct Answers {
    last: Mutex<Instant>,
    /// Set by an operation its caller gave up on, cleared by the next answer in time.
    unanswered_since: Mutex<Option<Instant>>,
}

impl Answers {
    fn answered(&self) {
        let now = Instant::now();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = now;
        *self
            .unanswered_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn timed_out(&self) {
        self.unanswered_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
    }
}

impl Database {
    /// Builds the pool for `url` and starts the actor on it, counting its operations in
    /// `metrics`; callers wait at most `options.deadline`. Needs a running actix system; does
    /// not wait for the database ([`Database::ping`] does).
    pub fn open(
        url: &DatabaseUrl,
        keyring: Arc<SharedKeyring>,
        options: PoolOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DbError> {
        Ok(Self::start(
            build_pool(url, options)?,
            TokenStore::new(keyring),
            metrics,
            options.deadline,
        ))
    }

    /// Starts the actor's threads, one per pooled connection.
    fn start(pool: DbPool, store: TokenStore, metrics: Arc<Metrics>, deadline: Duration) -> Self {
        let threads = pool.max_size() as usize;
        let (actor_pool, actor_metrics) = (pool.clone(), metrics.clone());
        let addr = SyncArbiter::start(threads, move || DbActor {
            pool: actor_pool.clone(),
            store: store.clone(),
            metrics: actor_metrics.clone(),
        });
        Self {
            addr,
            pool,
            metrics,
            deadline,
            answers: Arc::new(Answers {
                last: Mutex::new(Instant::now()),
                unanswered_since: Mutex::new(None),
            }),
            clock_offset: Arc::default(),
        }
    }

    /// How long a call waits for an operation (`DatabaseDeadline`).
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Now by the database's clock, as last measured, in Unix seconds: what leases are
    /// compared with, so that replicas whose clocks differ agree on when one expires.
    pub fn clock_now(&self) -> i64 {
        crate::domain::unix_now() + self.clock_offset.load(Ordering::Relaxed)
    }

    pub fn set_clock_offset(&self, seconds: i64) {
        self.clock_offset.store(seconds, Ordering::Relaxed);
    }

    /// Runs `work` with the store and a pooled connection on one of the actor's threads; counted
    /// and timed under `operation`. The caller waits at most the database deadline, unless the
    /// operation outlives its caller.
    pub async fn run<T, F>(&self, operation: DbOperation, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&TokenStore, &mut DbConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let deadline = (!operation.outlives_its_caller()).then_some(self.deadline);
        self.run_within(operation, deadline, work).await
    }

    /// [`Database::run`] with a deadline of the caller's own (`None`: wait for the answer).
    pub async fn run_within<T, F>(
        &self,
        operation: DbOperation,
        deadline: Option<Duration>,
        work: F,
    ) -> Result<T, DbError>
    where
        F: FnOnce(&TokenStore, &mut DbConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let deadline = deadline.map(|after| Instant::now() + after);
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.addr.do_send(Run {
            operation,
            work,
            deadline,
            reply,
        });
        let answer = match deadline {
            None => answer.await,
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), answer).await {
                Ok(answer) => answer,
                Err(_) => {
                    self.answers.timed_out();
                    self.metrics.count_db_operation(operation, "timed_out");
                    return Err(DbError::Timeout {
                        operation: operation.name(),
                    });
                }
            },
        };
        // No answer at all: the actor is gone.
        let result = answer.map_err(|_| DbError::Unavailable)?;
        self.answers.answered();
        result
    }

    /// How long the database has not answered an operation within its deadline, if it has not
    /// since then answered one in time.
    pub fn unanswered_for(&self) -> Option<Duration> {
        let since = *self
            .answers
            .unanswered_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        since.map(|since| since.elapsed())
    }

    /// Time since the database last answered an operation.
    pub fn last_answer_age(&self) -> Duration {
        self.answers
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// A trivial query: whether the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(DbOperation::Ping, |_, conn| conn.ping()).await
    }

    /// [`Database::ping`] within `deadline`.
    pub async fn ping_within(&self, deadline: Duration) -> Result<(), DbError> {
        self.run_within(DbOperation::Ping, Some(deadline), |_, conn| conn.ping())
            .await
    }

    /// Applies pending migrations; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<String>, DbError> {
        self.run(DbOperation::Migrate, |_, conn| run_migrations(conn))
            .await
    }

    /// Publishes the pool's open and idle connections to the metrics.
    pub fn export_pool_state(&self) {
        let state = self.pool.state();
        self.metrics
            .db_pool_connections
            .set(i64::from(state.connections));
        self.metrics
            .db_pool_idle
            .set(i64::from(state.idle_connections));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyringFile;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn sqlite_database(
        dir: &tempfile::TempDir,
        options: PoolOptions,
        metrics: Arc<Metrics>,
    ) -> Database {
        let keyring = KeyringFile::new(dir.path().join("keyring"));
        keyring.create().unwrap();
        let keyring = Arc::new(SharedKeyring::load(keyring.path()).unwrap());
        let url = format!("sqlite://{}", dir.path().join("tm.sqlite").display());
        let url = DatabaseUrl::parse(&url).unwrap();
        Database::open(&url, keyring, options, metrics).unwrap()
    }

    #[actix_rt::test]
    async fn a_caller_waits_at_most_the_deadline_and_what_it_gave_up_on_is_dropped_unless_it_keeps_a_grant()
     {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::unexported());
        let options = PoolOptions {
            max_size: 1,
            deadline: Duration::from_millis(300),
            ..PoolOptions::default()
        };
        let database = sqlite_database(&dir, options, metrics.clone());
        database.ping().await.unwrap();
        let counted = |operation: &str, outcome: &str| {
            metrics
                .db_operations
                .with_label_values(&[operation, outcome])
                .get()
        };

        // The actor's only thread hangs for 1.5 s, as on a database that stopped answering.
        let hung = database.run(DbOperation::Credential, |_, _| {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(())
        });
        let started = Instant::now();
        assert!(matches!(hung.await, Err(DbError::Timeout { .. })));
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(600),
            "waited {waited:?} for a 300 ms deadline"
        );
        assert!(database.unanswered_for().is_some());

        let (dropped, kept) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let ran = dropped.clone();
        let read = database.run(DbOperation::CredentialVersion, move |_, _| {
            ran.store(true, Ordering::SeqCst);
            Ok(())
        });
        assert!(matches!(read.await, Err(DbError::Timeout { .. })));
        let ran = kept.clone();
        let rotated_token_write = database.run(DbOperation::StoreRefreshed, move |_, _| {
            ran.store(true, Ordering::SeqCst);
            Ok(())
        });
        // Its caller stops waiting too, as a getToken at its own deadline does.
        let given_up = tokio::time::timeout(Duration::from_millis(100), rotated_token_write).await;
        assert!(given_up.is_err());

        // Once the database answers again, the next operation runs at once.
        tokio::time::sleep(Duration::from_millis(1600).saturating_sub(started.elapsed())).await;
        database.ping().await.unwrap();
        assert!(database.unanswered_for().is_none());
        assert!(
            !dropped.load(Ordering::SeqCst),
            "a read whose caller gave up must not run"
        );
        assert!(
            kept.load(Ordering::SeqCst),
            "a rotated refresh token's write runs to its end"
        );
        assert_eq!(counted("credential", "timed_out"), 1);
        assert_eq!(counted("credential_version", "timed_out"), 1);
        assert_eq!(counted("credential_version", "expired"), 1);
        assert_eq!(counted("store_refreshed", "ok"), 1);
    }

    #[actix_rt::test]
    async fn each_operation_is_counted_by_outcome_and_timed_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::unexported());
        let database = sqlite_database(&dir, PoolOptions::default(), metrics.clone());
        let counted = |outcome| {
            metrics
                .db_operations
                .with_label_values(&["ping", outcome])
                .get()
        };
        let timed = || {
            metrics
                .db_operation_duration
                .with_label_values(&["ping"])
                .get_sample_count()
        };

        database.ping().await.unwrap();
        let failed = database
            .run(DbOperation::Ping, |_, _| Err::<(), _>(DbError::Unavailable))
            .await;

        assert!(matches!(failed, Err(DbError::Unavailable)));
        assert_eq!((counted("ok"), counted("error"), timed()), (1, 1, 2));
    }
}
