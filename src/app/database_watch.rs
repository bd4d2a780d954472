//! The database seen from the background, so that nothing a scraper asks waits for it: a probe
//! keeps `tokenmanager_db_last_answer_age_seconds` meaningful on an idle service (and notices a
//! database that answers again), and the stored-credential gauges are counted here, not at
//! scrape; a scrape publishes how old they are.
//!
//! Counting reads every row of `tokens` (by provider and state, and the two expiry windows; an
//! index makes it read the index alone, not the rows), so it costs in proportion to the stored
//! credentials (bench/README.md, "Scale", has the figures up to 1,000,000 rows) and cannot
//! follow every write. The credentials are counted at most once per second after a write of this
//! process, every 15 s otherwise, and never sooner than 50 times the last count's duration after
//! it: counting takes at most ~2 % of one database connection's time, whatever the table's size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::service::Service;

/// How often the database's state is looked at; also the shortest time between two counts.
const TICK: Duration = Duration::from_secs(1);
/// A database that answered nothing for this long is asked: an idle service notices a hung
/// database, and one that answers again, within a probe of it.
const PROBE_AFTER: Duration = Duration::from_secs(5);
/// How often the stored credentials are counted without a write of this process to prompt it
/// (other replicas and command-line writers change them too).
const COUNT_EVERY: Duration = Duration::from_secs(15);
/// The time between two counts is at least this many times the last count's duration.
const COUNT_BUDGET: u32 = 50;

/// When the next count is due.
#[derive(Debug, Default)]
struct CountSchedule {
    /// When the last count ended, and how long it took.
    last: Option<(Instant, Duration)>,
    /// A write of this process since the last count.
    changed: bool,
    /// The last count failed.
    last_failed: bool,
}

impl CountSchedule {
    fn due(&self, now: Instant) -> bool {
        let Some((at, took)) = self.last else {
            return true;
        };
        let floor = took * COUNT_BUDGET;
        let wait = if self.changed && !self.last_failed {
            TICK.max(floor)
        } else {
            COUNT_EVERY.max(floor)
        };
        now.duration_since(at) >= wait
    }

    fn counted(&mut self, ended: Instant, took: Duration) {
        self.last = Some((ended, took));
        self.changed = false;
        self.last_failed = false;
    }

    /// A count that failed (a database that did not answer within the deadline, or at all) is
    /// tried again after COUNT_EVERY, writes or not: not at every tick.
    fn failed(&mut self, ended: Instant) {
        let took = self.last.map_or(Duration::ZERO, |(_, took)| took);
        self.last = Some((ended, took));
        self.last_failed = true;
    }
}

pub(super) async fn watch_database(service: Arc<Service>) {
    let mut schedule = CountSchedule::default();
    let mut ticks = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = service.credentials_changed() => {
                // Counted at the next tick that is due, not now: a burst of writes costs one count.
                schedule.changed = true;
                continue;
            }
        }
        if schedule.due(Instant::now()) {
            let started = Instant::now();
            match service.count_credentials().await {
                Ok(()) => schedule.counted(Instant::now(), started.elapsed()),
                Err(error) => {
                    schedule.failed(Instant::now());
                    tracing::warn!(%error, "cannot count the stored credentials");
                }
            }
        }
        let database = service.database();
        if database.unanswered_for().is_some() || database.last_answer_age() >= PROBE_AFTER {
            // Its answer, or its timing out, is recorded by the database itself.
            let _ = database.ping().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(start: Instant, seconds: f64) -> Instant {
        start + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn a_quick_count_follows_writes_within_a_tick_and_runs_every_15_s_otherwise() {
        let start = Instant::now();
        let mut schedule = CountSchedule::default();
        assert!(schedule.due(start), "the first count is due at once");
        schedule.counted(start, Duration::from_millis(5));
        assert!(!schedule.due(after(start, 14.9)));
        assert!(schedule.due(after(start, 15.0)));
        schedule.changed = true;
        assert!(!schedule.due(after(start, 0.9)));
        assert!(schedule.due(after(start, 1.0)));
    }

    #[test]
    fn a_failed_count_is_tried_again_after_15_s_even_after_writes() {
        let start = Instant::now();
        let mut schedule = CountSchedule {
            changed: true,
            ..CountSchedule::default()
        };
        schedule.failed(start);
        schedule.changed = true;
        assert!(
            !schedule.due(after(start, 14.9)),
            "not at every tick: each try may hold a connection up to the deadline"
        );
        assert!(schedule.due(after(start, 15.0)));
    }

    #[test]
    fn a_slow_count_waits_50_times_its_duration_even_after_writes() {
        let start = Instant::now();
        let mut schedule = CountSchedule::default();
        schedule.counted(start, Duration::from_millis(500));
        schedule.changed = true;
        assert!(!schedule.due(after(start, 24.9)), "writes do not hurry it");
        assert!(schedule.due(after(start, 25.0)));
        schedule.changed = false;
        assert!(!schedule.due(after(start, 24.9)));
        assert!(schedule.due(after(start, 25.0)));
    }
}
