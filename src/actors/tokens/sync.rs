//! How far this replica's token cache is in step with the changes the database announces (see
//! `db::changes` and `actors::change_feed`). A cached user token is served without asking the
//! database only while both hold:
//!
//! - the cache is *in step*: every change committed more than the staleness bound ago
//!   (`MaxStaleness`) has been applied to it — a replica whose change feed broke or fell behind
//!   stops trusting its cache within the bound;
//! - the token was *confirmed in this epoch*: it was cached, or checked against the database,
//!   since the feed's last gap (a new PostgreSQL session, a change log pruned past the reader),
//!   and no change was applied between the database read it came from and its caching.
//!
//! Otherwise a hit asks the database for the credential's version, as every hit did before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The cache's sync state. Times are microseconds since `origin`, so that they fit atomics.
#[derive(Debug)]
pub(crate) struct SyncState {
    origin: Instant,
    /// Every change committed before this has been applied; 0: nothing confirmed yet.
    complete_as_of: AtomicU64,
    /// Counts the feed's gaps: tokens confirmed in an earlier epoch are confirmed again.
    epoch: AtomicU64,
    /// Counts the changes applied; changed only under the cache's write lock.
    pub(super) applied: AtomicU64,
    bound: Duration,
}

/// The sync state when a token's database read began: if it is still the same when the token
/// is cached, no change was applied in between that the read may have missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(super) epoch: u64,
    pub(super) applied: u64,
}

/// The epoch no token is confirmed in.
pub(super) const UNCONFIRMED: u64 = 0;

impl SyncState {
    pub(crate) fn new(bound: Duration) -> Self {
        Self {
            origin: Instant::now(),
            complete_as_of: AtomicU64::new(0),
            epoch: AtomicU64::new(UNCONFIRMED + 1),
            applied: AtomicU64::new(0),
            bound,
        }
    }

    /// Every change committed before `as_of` has been applied.
    pub(crate) fn confirm(&self, as_of: Instant) {
        let micros = as_of.saturating_duration_since(self.origin).as_micros() as u64 + 1;
        self.complete_as_of.fetch_max(micros, Ordering::AcqRel);
    }

    /// Changes may have been lost: every cached token is confirmed again before it is served
    /// without asking the database.
    pub(crate) fn gap(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// How old the last confirmed sync is; `None` before the first.
    pub(crate) fn age(&self) -> Option<Duration> {
        let micros = self.complete_as_of.load(Ordering::Acquire);
        (micros > 0).then(|| {
            let as_of = self.origin + Duration::from_micros(micros - 1);
            as_of.elapsed()
        })
    }

    /// Whether every change committed more than the bound ago has been applied.
    pub(crate) fn in_step(&self) -> bool {
        self.age().is_some_and(|age| age <= self.bound)
    }

    pub(crate) fn bound(&self) -> Duration {
        self.bound
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn stamp(&self) -> Stamp {
        Stamp {
            epoch: self.epoch(),
            applied: self.applied.load(Ordering::Acquire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_step_only_while_the_last_confirmed_sync_is_within_the_bound() {
        let sync = SyncState::new(Duration::from_millis(200));
        assert!(!sync.in_step(), "nothing confirmed yet");
        sync.confirm(Instant::now());
        assert!(sync.in_step());
        sync.confirm(Instant::now() - Duration::from_secs(5));
        assert!(sync.in_step(), "an older confirmation never moves it back");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!sync.in_step());
        assert!(sync.age().unwrap() >= Duration::from_millis(250));
    }

    #[test]
    fn a_gap_starts_a_new_epoch() {
        let sync = SyncState::new(Duration::from_secs(1));
        let before = sync.stamp();
        sync.gap();
        assert_ne!(sync.stamp(), before);
        assert_ne!(sync.epoch(), UNCONFIRMED);
    }
}
