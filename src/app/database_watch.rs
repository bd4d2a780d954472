//! The database seen from the background, so that nothing a scraper asks waits for it: a probe
//! keeps `tokenmanager_db_last_answer_age_seconds` meaningful on an idle service (and notices a
//! database that answers again), and the stored-credential gauges are counted here, not at
//! scrape; a scrape publishes how old they are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::service::Service;

/// How often the database's state is looked at.
const TICK: Duration = Duration::from_secs(1);
/// A database that answered nothing for this long is asked: an idle service notices a hung
/// database, and one that answers again, within a probe of it.
const PROBE_AFTER: Duration = Duration::from_secs(5);
/// How often the stored credentials are counted without a write of this process to prompt it
/// (other replicas and command-line writers change them too).
const COUNT_EVERY: Duration = Duration::from_secs(15);

pub(super) async fn watch_database(service: Arc<Service>) {
    let mut counted: Option<Instant> = None;
    let mut ticks = tokio::time::interval(TICK);
    loop {
        let changed = tokio::select! {
            _ = ticks.tick() => false,
            () = service.credentials_changed() => true,
        };
        if changed || counted.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
            match service.count_credentials().await {
                Ok(()) => counted = Some(Instant::now()),
                Err(error) => tracing::warn!(%error, "cannot count the stored credentials"),
            }
        }
        let database = service.database();
        if database.unanswered_for().is_some() || database.last_answer_age() >= PROBE_AFTER {
            // Its answer, or its timing out, is recorded by the database itself.
            let _ = database.ping().await;
        }
    }
}
