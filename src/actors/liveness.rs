//! This replica's liveness lock (see `db::liveness`), held on a connection of its own outside
//! the pool for the life of the process, and the database's clock, read on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::actors::db::Database;
use crate::config::DatabaseUrl;
use crate::db::{DbConn, DbError, database_now, establish, take_liveness_lock};
use crate::domain::unix_now;
use crate::metrics::Metrics;

/// How often the connection is checked (and the clock read): a lost lock is taken again
/// within this, well inside the time other replicas wait before they take over its leases.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Holds the lock until dropped.
pub struct LivenessLock {
    stop: Arc<AtomicBool>,
}

impl LivenessLock {
    /// Starts the thread that holds `owner`'s lock on a connection to `url` and keeps
    /// `database`'s clock; returns once the lock is held, or fails after `wait`: a replica must
    /// not take a lease that others would think abandoned.
    pub fn hold(
        url: &DatabaseUrl,
        owner: &str,
        database: Database,
        metrics: Arc<Metrics>,
        wait: Duration,
    ) -> Result<Self, DbError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (url, owner, stopped) = (url.clone(), owner.to_owned(), stop.clone());
        std::thread::Builder::new()
            .name("liveness-lock".into())
            .spawn(move || {
                let mut keeper = Keeper {
                    url,
                    owner,
                    database,
                    metrics,
                    conn: None,
                    failing_since: None,
                    warned: false,
                };
                let mut announced = false;
                while !stopped.load(Ordering::Relaxed) {
                    keeper.check();
                    if !announced && keeper.conn.is_some() {
                        announced = held_tx.send(()).is_ok();
                    }
                    std::thread::sleep(CHECK_EVERY);
                }
            })
            .map_err(|_| DbError::Unavailable)?;
        match held_rx.recv_timeout(wait) {
            Ok(()) => Ok(Self { stop }),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                Err(DbError::Timeout {
                    operation: "liveness_lock",
                })
            }
        }
    }
}

impl Drop for LivenessLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Keeper {
    url: DatabaseUrl,
    owner: String,
    database: Database,
    metrics: Arc<Metrics>,
    /// The session that holds the lock.
    conn: Option<DbConn>,
    /// Since when the lock has not been held (its session broke, or none could be opened).
    failing_since: Option<Instant>,
    /// Whether that was logged at WARN (a session replaced at once is not).
    warned: bool,
}

impl Keeper {
    fn check(&mut self) {
        let mut result = match self.conn.as_mut() {
            Some(conn) => database_now(conn),
            None => self.relock(),
        };
        if result.is_err() && self.conn.take().is_some() {
            // The session broke: a new one at once, before other replicas count this one gone.
            self.failing_since.get_or_insert_with(Instant::now);
            result = self.relock();
        }
        match result {
            Ok(database_now) => {
                self.database.set_clock_offset(database_now - unix_now());
                self.warned = false;
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        seconds = since.elapsed().as_secs_f64(),
                        "the liveness lock is held again"
                    );
                }
            }
            Err(error) => {
                // The session (and with it the lock) may be gone: start over on a new one.
                self.conn = None;
                self.metrics.liveness_lock_held.set(0);
                if !self.warned {
                    self.warned = true;
                    self.failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(%error, "the liveness lock is not held; other replicas take over this process's refresh leases if it stays lost");
                }
            }
        }
    }

    /// A new session holding the lock, and the database's clock read on it.
    fn relock(&mut self) -> Result<i64, DbError> {
        self.lock()?;
        database_now(self.conn.as_mut().expect("the lock was just taken"))
    }

    fn lock(&mut self) -> Result<(), DbError> {
        let mut conn = establish(&self.url)?;
        if !take_liveness_lock(&mut conn, &self.owner)? {
            return Err(DbError::LockTaken);
        }
        self.conn = Some(conn);
        self.metrics.liveness_lock_held.set(1);
        Ok(())
    }
}
