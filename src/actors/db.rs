//! The DB actor: the only code that holds the pool. It runs on a `SyncArbiter` (one thread per
//! pooled connection), because diesel is blocking; async code talks to it through [`Database`].

use actix::prelude::*;

use std::sync::Arc;
use std::time::Instant;

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

/// One store operation, run on the actor's thread with a pooled connection.
struct Run<F> {
    operation: DbOperation,
    work: F,
}

impl<F, T> Message for Run<F>
where
    F: FnOnce(&TokenStore, &mut DbConn) -> Result<T, DbError>,
    T: 'static,
{
    type Result = Result<T, DbError>;
}

impl<F, T> Handler<Run<F>> for DbActor
where
    F: FnOnce(&TokenStore, &mut DbConn) -> Result<T, DbError>,
    T: 'static,
{
    type Result = Result<T, DbError>;

    fn handle(&mut self, run: Run<F>, _: &mut SyncContext<Self>) -> Self::Result {
        let started = Instant::now();
        let result = self
            .pool
            .get()
            .map_err(DbError::from)
            .and_then(|mut pooled| {
                self.metrics
                    .db_pool_wait
                    .observe(started.elapsed().as_secs_f64());
                (run.work)(&self.store, &mut pooled)
            });
        self.metrics
            .observe_db_operation(run.operation, result.is_ok(), started);
        result
    }
}

/// The async face of the DB actor: what the rest of the service holds.
#[derive(Clone)]
pub struct Database {
    addr: Addr<DbActor>,
    pool: DbPool,
    metrics: Arc<Metrics>,
}

impl Database {
    /// Builds the pool for `url` and starts the actor on it, counting its operations in
    /// `metrics`. Needs a running actix system; does not wait for the database
    /// ([`Database::ping`] does).
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
        ))
    }

    /// Starts the actor's threads, one per pooled connection.
    fn start(pool: DbPool, store: TokenStore, metrics: Arc<Metrics>) -> Self {
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
        }
    }

    /// Runs `work` with the store and a pooled connection on one of the actor's threads; counted
    /// and timed under `operation`.
    pub async fn run<T, F>(&self, operation: DbOperation, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&TokenStore, &mut DbConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        self.addr
            .send(Run { operation, work })
            .await
            .map_err(|_| DbError::Unavailable)?
    }

    /// A trivial query: whether the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(DbOperation::Ping, |_, conn| conn.ping()).await
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

    #[actix_rt::test]
    async fn each_operation_is_counted_by_outcome_and_timed_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = KeyringFile::new(dir.path().join("keyring"));
        keyring.create().unwrap();
        let keyring = Arc::new(SharedKeyring::load(keyring.path()).unwrap());
        let url = format!("sqlite://{}", dir.path().join("tm.sqlite").display());
        let url = DatabaseUrl::parse(&url).unwrap();
        let metrics = Arc::new(Metrics::unexported());
        let database =
            Database::open(&url, keyring, PoolOptions::default(), metrics.clone()).unwrap();
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
