//! The change feed: a thread of its own reads the database's change stream (see `db::changes`)
//! on a connection outside the pool and applies it to the token cache, so that cache hits need
//! no database round trip (see `actors::tokens::sync` for when they are trusted).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::actors::tokens::CacheSync;
use crate::config::{Backend, DatabaseUrl};
use crate::db::{ChangeReader, DbError};

/// How often the stream is confirmed complete (a round trip): a change is applied, and a
/// broken feed noticed, within about this. Well inside any sensible `MaxStaleness`.
const CONFIRM_EVERY: Duration = Duration::from_millis(100);
/// How often PostgreSQL's delivered notifications are taken between confirmations (no round
/// trip: what the server pushed).
const TAKE_NOTIFICATIONS_EVERY: Duration = Duration::from_millis(20);
/// How often the change log is pruned of rows past its retention (MariaDB, SQLite).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a failing feed waits before it tries a new session, after the first retry.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Reads until dropped.
pub struct ChangeFeed {
    stop: Arc<AtomicBool>,
}

impl ChangeFeed {
    /// Starts the thread that applies `url`'s change stream to the cache behind `sync`.
    pub(crate) fn start(url: &DatabaseUrl, sync: CacheSync) -> Result<Self, DbError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut instance = [0_u8; 8];
        openssl::rand::rand_bytes(&mut instance).map_err(|_| DbError::Unavailable)?;
        let reader = ChangeReader::new(url, u64::from_le_bytes(instance));
        let mut feed = Feed {
            reader,
            sync,
            notifications: url.backend() == Backend::Postgres,
            last_confirmed: None,
            last_pruned: Instant::now(),
            failing_since: None,
        };
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("change-feed".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    let pause = feed.step();
                    std::thread::sleep(pause);
                }
            })
            .map_err(|_| DbError::Unavailable)?;
        Ok(Self { stop })
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Feed {
    reader: ChangeReader,
    sync: CacheSync,
    /// PostgreSQL: notifications are pushed, and taken between confirmations.
    notifications: bool,
    last_confirmed: Option<Instant>,
    last_pruned: Instant,
    failing_since: Option<Instant>,
}

impl Feed {
    /// One read; returns how long to wait before the next.
    fn step(&mut self) -> Duration {
        let confirm = self
            .last_confirmed
            .is_none_or(|at| at.elapsed() >= CONFIRM_EVERY);
        if !confirm && !self.notifications {
            return CONFIRM_EVERY.saturating_sub(
                self.last_confirmed
                    .map_or(Duration::ZERO, |at| at.elapsed()),
            );
        }
        let started = Instant::now();
        match self.reader.read(confirm) {
            Ok(batch) => {
                self.sync.apply(&batch);
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        seconds = since.elapsed().as_secs_f64(),
                        "the change feed reads again"
                    );
                }
                if confirm {
                    if batch.complete_as_of.is_none() && !self.notifications {
                        // Behind: read the rest at once.
                        return Duration::ZERO;
                    }
                    self.last_confirmed = Some(started);
                    if started.elapsed() >= CONFIRM_EVERY {
                        // A read that took longer than the interval (a session stalled, now
                        // back) confirms a sync already that old: waiting the interval again
                        // would let its age cross the staleness bound once more.
                        return Duration::ZERO;
                    }
                }
            }
            Err(error) => {
                let first = self.failing_since.is_none();
                self.failing_since.get_or_insert(started);
                if first {
                    tracing::warn!(%error, bound = ?self.sync.state().bound(),
                        "the change feed cannot read; cached user tokens are confirmed with the database once it is older than the staleness bound");
                    // A broken session is replaced at once; a database that refuses, less often.
                    return Duration::ZERO;
                }
                return RETRY_EVERY;
            }
        }
        if self.last_pruned.elapsed() >= PRUNE_EVERY {
            self.last_pruned = Instant::now();
            match self.reader.prune() {
                Ok(pruned) if pruned > 0 => tracing::debug!(pruned, "change log pruned"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot prune the change log"),
            }
        }
        if self.notifications {
            TAKE_NOTIFICATIONS_EVERY
        } else {
            CONFIRM_EVERY
        }
    }
}
