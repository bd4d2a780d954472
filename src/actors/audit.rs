//! The audit trail's writer (docs/OPERATIONS.md#the-audit-trail). The request path only adds to
//! memory: a handout is counted into its window's aggregate (one map entry per caller, subject,
//! token key, protocol, origin and outcome), a credential change is queued. A background task
//! writes both, in batches through the DB actor, when each window ends; each record is also one
//! log event (target `tokenmanager::audit`). A stop writes what is left within its grace period;
//! what the database does not take then is counted and logged as lost.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::actors::db::{Database, DbOperation};
use crate::db::DbError;
use crate::db::audit::{self, AuditQuery, PURGE_BATCH, StoredAuditRecord};
use crate::domain::audit::{AddressSet, AuditKind, AuditRecord, Origin, Protocol};
use crate::domain::unix_now;
use crate::metrics::Metrics;

/// Records waiting to be written, beyond which new ones are dropped (and counted): a database
/// that does not answer for long must not make the service run out of memory.
pub const MAX_PENDING: usize = 100_000;

/// What a handout is aggregated by: the caller, the subject and the token key, how the call came
/// and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HandoutKey {
    pub caller: Option<String>,
    pub caller_group: Option<String>,
    pub on_behalf_of: Option<String>,
    pub user_id: Option<String>,
    pub provider: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Option<String>,
    pub audience: Option<String>,
    pub protocol: Protocol,
    pub origin: Option<Origin>,
    /// `ok` or the error code.
    pub outcome: &'static str,
}

/// One window's tally of a [`HandoutKey`].
struct Tally {
    first_at: i64,
    last_at: i64,
    occurrences: i64,
    addresses: AddressSet,
}

#[derive(Default)]
struct Pending {
    window: HashMap<HandoutKey, Tally>,
    /// Credential changes, and records a failed write left for the next attempt.
    queued: Vec<AuditRecord>,
}

impl Pending {
    fn len(&self) -> usize {
        self.window.len() + self.queued.len()
    }
}

struct Shared {
    pending: Mutex<Pending>,
    database: Database,
    replica: Arc<str>,
    metrics: Arc<Metrics>,
    enabled: bool,
}

/// The audit trail of one process; cheap to clone.
#[derive(Clone)]
pub struct AuditTrail {
    shared: Arc<Shared>,
}

impl AuditTrail {
    /// The trail of the process `replica` (its lease-owner id); with `enabled` false it records
    /// nothing.
    pub fn new(
        database: Database,
        replica: Arc<str>,
        enabled: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        // The kinds' counters exist at 0 before their first record.
        for kind in AuditKind::ALL {
            metrics.audit_records.with_label_values(&[kind.as_str()]);
        }
        Self {
            shared: Arc::new(Shared {
                pending: Mutex::default(),
                database,
                replica,
                metrics,
                enabled,
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.shared.enabled
    }

    /// Counts one getToken into its window's aggregate.
    pub fn handout(&self, key: HandoutKey, address: Option<IpAddr>) {
        if !self.shared.enabled {
            return;
        }
        let now = unix_now();
        let mut pending = self.lock();
        if let Some(tally) = pending.window.get_mut(&key) {
            tally.last_at = now;
            tally.occurrences += 1;
            if let Some(address) = address {
                tally.addresses.insert(address);
            }
            return;
        }
        if pending.len() >= MAX_PENDING {
            drop(pending);
            self.lost("overflow", 1);
            return;
        }
        let mut addresses = AddressSet::default();
        if let Some(address) = address {
            addresses.insert(address);
        }
        pending.window.insert(
            key,
            Tally {
                first_at: now,
                last_at: now,
                occurrences: 1,
                addresses,
            },
        );
    }

    /// Queues one credential change (or any single event); `first_at`, `last_at`,
    /// `occurrences` and `replica` are filled in here when unset.
    pub fn record(&self, mut record: AuditRecord) {
        if !self.shared.enabled {
            return;
        }
        if record.first_at == 0 {
            record.first_at = unix_now();
        }
        if record.last_at == 0 {
            record.last_at = record.first_at;
        }
        record.occurrences = record.occurrences.max(1);
        if record.replica.is_empty() {
            record.replica = self.shared.replica.to_string();
        }
        log(&record);
        let mut pending = self.lock();
        if pending.len() >= MAX_PENDING {
            drop(pending);
            self.lost("overflow", 1);
            return;
        }
        pending.queued.push(record);
    }

    /// Writes what is pending: every window so far closes. Records the database does not take
    /// stay pending for the next attempt (within [`MAX_PENDING`]).
    pub async fn flush(&self, deadline: Option<Duration>) -> Result<usize, DbError> {
        let records = self.take();
        if records.is_empty() {
            return Ok(0);
        }
        match self.write(records.clone(), deadline).await {
            Ok(written) => Ok(written),
            Err(error) => {
                self.shared.metrics.audit_write_failures.inc();
                let mut pending = self.lock();
                let room = MAX_PENDING.saturating_sub(pending.len());
                let kept = records.len().min(room);
                let dropped = records.len() - kept;
                let mut records = records;
                records.truncate(kept);
                // Ahead of what came since, to keep the order.
                records.append(&mut pending.queued);
                pending.queued = records;
                drop(pending);
                if dropped > 0 {
                    self.lost("overflow", dropped);
                }
                Err(error)
            }
        }
    }

    /// At a stop: writes everything pending within `deadline`; what the database does not take
    /// is counted and logged as lost.
    pub async fn close(&self, deadline: Duration) {
        let pending = self.lock().len();
        if pending == 0 {
            return;
        }
        match self.flush(Some(deadline)).await {
            Ok(written) => tracing::info!(written, "audit trail written at stop"),
            Err(error) => {
                let lost = std::mem::take(&mut *self.lock()).len();
                self.lost("shutdown", lost);
                tracing::error!(lost, %error, "audit records lost at stop: the database did not take them");
            }
        }
    }

    /// The background writer: flushes at the end of every `window`, until the task is aborted
    /// (a stop then calls [`AuditTrail::close`]).
    pub async fn write_every(self, window: Duration) {
        let mut ticks = tokio::time::interval(window);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(error) = self.flush(None).await {
                let pending = self.lock().len();
                tracing::warn!(%error, pending, "audit records not written; retried at the next window");
            }
        }
    }

    /// Deletes the records older than `retention`, [`PURGE_BATCH`] rows per database operation,
    /// each its own transaction, so that token writes wait for one batch at most. Returns the
    /// number deleted.
    pub async fn purge(&self, retention: Duration) -> Result<usize, DbError> {
        let cutoff = unix_now() - retention.as_secs() as i64;
        let mut purged = 0;
        loop {
            let deleted = self
                .shared
                .database
                .run(DbOperation::AuditPurge, move |_, conn| {
                    audit::purge_batch(conn, cutoff)
                })
                .await?;
            purged += deleted;
            self.shared.metrics.audit_purged.inc_by(deleted as u64);
            if (deleted as i64) < PURGE_BATCH {
                return Ok(purged);
            }
            // Lets the token path's operations in between batches.
            tokio::task::yield_now().await;
        }
    }

    /// Purges hourly, the first time a minute after start.
    pub async fn purge_every_hour(self, retention: Duration) {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut ticks = tokio::time::interval(Duration::from_secs(3600));
        loop {
            ticks.tick().await;
            match self.purge(retention).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "old audit records deleted"),
                Err(error) => {
                    tracing::warn!(%error, "old audit records not deleted; tried again in an hour")
                }
            }
        }
    }

    /// The records `query` selects, newest first.
    pub async fn read(&self, query: AuditQuery) -> Result<Vec<StoredAuditRecord>, DbError> {
        self.shared
            .database
            .run(DbOperation::AuditRead, move |_, conn| {
                audit::read(conn, &query)
            })
            .await
    }

    /// Records waiting to be written.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn take(&self) -> Vec<AuditRecord> {
        let mut pending = self.lock();
        let window = std::mem::take(&mut pending.window);
        let mut records = std::mem::take(&mut pending.queued);
        drop(pending);
        let replica = self.shared.replica.to_string();
        records.extend(window.into_iter().map(|(key, tally)| {
            let (client_addresses, more_addresses) = tally.addresses.into_parts();
            let record = AuditRecord {
                first_at: tally.first_at,
                last_at: tally.last_at,
                occurrences: tally.occurrences,
                kind: AuditKind::Handout,
                origin: key.origin,
                outcome: key.outcome.to_owned(),
                caller: key.caller,
                caller_group: key.caller_group,
                on_behalf_of: key.on_behalf_of,
                user_id: key.user_id,
                provider: key.provider,
                client_id: key.client_id,
                scopes: key.scopes,
                audience: key.audience,
                protocol: key.protocol,
                client_addresses,
                more_addresses,
                replica: replica.clone(),
                detail: None,
            };
            log(&record);
            record
        }));
        records
    }

    async fn write(
        &self,
        records: Vec<AuditRecord>,
        deadline: Option<Duration>,
    ) -> Result<usize, DbError> {
        let metrics = self.shared.metrics.clone();
        let deadline = deadline.or(Some(self.shared.database.deadline()));
        self.shared
            .database
            .run_within(DbOperation::AuditAppend, deadline, move |_, conn| {
                let written = audit::append(conn, &records)?;
                for record in &records {
                    metrics
                        .audit_records
                        .with_label_values(&[record.kind.as_str()])
                        .inc();
                }
                Ok(written)
            })
            .await
    }

    fn lost(&self, reason: &str, count: usize) {
        self.shared
            .metrics
            .audit_records_lost
            .with_label_values(&[reason])
            .inc_by(count as u64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The record's log event: the same fields as its row.
fn log(record: &AuditRecord) {
    tracing::info!(
        target: "tokenmanager::audit",
        kind = record.kind.as_str(),
        origin = record.origin.map(Origin::as_str),
        outcome = %record.outcome,
        caller = record.caller.as_deref(),
        caller_group = record.caller_group.as_deref(),
        on_behalf_of = record.on_behalf_of.as_deref(),
        user_id = record.user_id.as_deref(),
        provider = record.provider.as_deref(),
        client_id = record.client_id.as_deref(),
        scopes = record.scopes.as_deref(),
        audience = record.audience.as_deref(),
        protocol = record.protocol.as_str(),
        client_addresses = record.addresses_text(),
        first_at = record.first_at,
        last_at = record.last_at,
        occurrences = record.occurrences,
        detail = record.detail.as_deref(),
        "audit"
    );
}
