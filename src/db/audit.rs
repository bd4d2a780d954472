//! The audit trail's table (`audit_events`): appended in batches, read newest first, purged in
//! small batches so that no statement holds the write lock (on SQLite, the file's) for long.

use diesel::prelude::*;

use super::schema::audit_events;
use super::store::retry_lost_races;
use super::{DbConn, DbError};
use crate::domain::audit::{AuditKind, AuditRecord, Origin, Protocol};

/// Rows per INSERT statement: one transaction of this many rows holds SQLite's write lock for a
/// few milliseconds.
pub const INSERT_BATCH: usize = 200;

/// Rows per purge statement, for the same reason.
pub const PURGE_BATCH: i64 = 1000;

#[derive(Insertable)]
#[diesel(table_name = audit_events)]
struct AuditRow<'a> {
    first_at: i64,
    last_at: i64,
    occurrences: i64,
    kind: &'a str,
    origin: Option<&'a str>,
    outcome: &'a str,
    caller: Option<&'a str>,
    caller_group: Option<&'a str>,
    on_behalf_of: Option<&'a str>,
    user_id: Option<&'a str>,
    provider: Option<&'a str>,
    client_id: Option<&'a str>,
    scopes: Option<&'a str>,
    audience: Option<&'a str>,
    protocol: &'a str,
    client_addresses: Option<String>,
    replica: &'a str,
    detail: Option<&'a str>,
}

impl<'a> AuditRow<'a> {
    fn of(record: &'a AuditRecord) -> Self {
        Self {
            first_at: record.first_at,
            last_at: record.last_at,
            occurrences: record.occurrences,
            kind: record.kind.as_str(),
            origin: record.origin.map(Origin::as_str),
            outcome: &record.outcome,
            caller: record.caller.as_deref(),
            caller_group: record.caller_group.as_deref(),
            on_behalf_of: record.on_behalf_of.as_deref(),
            user_id: record.user_id.as_deref(),
            provider: record.provider.as_deref(),
            client_id: record.client_id.as_deref(),
            scopes: record.scopes.as_deref(),
            audience: record.audience.as_deref(),
            protocol: record.protocol.as_str(),
            client_addresses: record.addresses_text(),
            replica: &record.replica,
            detail: record.detail.as_deref(),
        }
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = audit_events)]
struct StoredRow {
    id: i64,
    first_at: i64,
    last_at: i64,
    occurrences: i64,
    kind: String,
    origin: Option<String>,
    outcome: String,
    caller: Option<String>,
    caller_group: Option<String>,
    on_behalf_of: Option<String>,
    user_id: Option<String>,
    provider: Option<String>,
    client_id: Option<String>,
    scopes: Option<String>,
    audience: Option<String>,
    protocol: String,
    client_addresses: Option<String>,
    replica: String,
    detail: Option<String>,
}

/// A record as read back, with its row id. A kind, origin or protocol this release does not
/// know (a newer one wrote it) reads as the default and is named in `detail`.
#[derive(Clone, Debug)]
pub struct StoredAuditRecord {
    pub id: i64,
    pub record: AuditRecord,
}

impl From<StoredRow> for StoredAuditRecord {
    fn from(row: StoredRow) -> Self {
        let mut record = AuditRecord {
            first_at: row.first_at,
            last_at: row.last_at,
            occurrences: row.occurrences,
            kind: AuditKind::parse(&row.kind).unwrap_or_default(),
            origin: row.origin.as_deref().and_then(Origin::parse),
            outcome: row.outcome,
            caller: row.caller,
            caller_group: row.caller_group,
            on_behalf_of: row.on_behalf_of,
            user_id: row.user_id,
            provider: row.provider,
            client_id: row.client_id,
            scopes: row.scopes,
            audience: row.audience,
            protocol: Protocol::parse(&row.protocol).unwrap_or_default(),
            client_addresses: Vec::new(),
            more_addresses: false,
            replica: row.replica,
            detail: row.detail,
        };
        if let Some(text) = &row.client_addresses {
            record.set_addresses_text(text);
        }
        let unknown = AuditKind::parse(&row.kind).is_none()
            || Protocol::parse(&row.protocol).is_none()
            || row
                .origin
                .as_deref()
                .is_some_and(|o| Origin::parse(o).is_none());
        if unknown {
            record.detail = Some(format!(
                "recorded as {}/{}/{} by a newer release; {}",
                row.kind,
                row.origin.as_deref().unwrap_or("-"),
                row.protocol,
                record.detail.unwrap_or_default()
            ));
        }
        Self { id: row.id, record }
    }
}

/// Which records to read.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Records about these IdP user IDs or made on behalf of these DIRAC users; all when both
    /// are empty.
    pub user_ids: Vec<String>,
    pub usernames: Vec<String>,
    pub provider: Option<String>,
    /// Records whose last time is at or after this (Unix seconds).
    pub since: i64,
    pub limit: i64,
}

/// Appends `records`, [`INSERT_BATCH`] rows per transaction (one INSERT per row: diesel's
/// multi-row INSERT is not available across backends).
pub fn append(conn: &mut DbConn, records: &[AuditRecord]) -> Result<usize, DbError> {
    let mut written = 0;
    for batch in records.chunks(INSERT_BATCH) {
        written += retry_lost_races(|| {
            conn.transaction(|conn| {
                let mut rows = 0;
                for record in batch {
                    rows += diesel::insert_into(audit_events::table)
                        .values(AuditRow::of(record))
                        .execute(conn)?;
                }
                Ok::<_, diesel::result::Error>(rows)
            })
            .map_err(DbError::from)
        })?;
    }
    Ok(written)
}

/// The records `query` selects, newest first.
pub fn read(conn: &mut DbConn, query: &AuditQuery) -> Result<Vec<StoredAuditRecord>, DbError> {
    let mut select = audit_events::table
        .filter(audit_events::last_at.ge(query.since))
        .into_boxed();
    if !query.user_ids.is_empty() || !query.usernames.is_empty() {
        select = select.filter(
            audit_events::user_id
                .eq_any(&query.user_ids)
                .or(audit_events::on_behalf_of.eq_any(&query.usernames)),
        );
    }
    if let Some(provider) = &query.provider {
        select = select.filter(audit_events::provider.eq(provider));
    }
    Ok(select
        .order(audit_events::id.desc())
        .limit(query.limit)
        .select(StoredRow::as_select())
        .load(conn)?
        .into_iter()
        .map(StoredAuditRecord::from)
        .collect())
}

/// Deletes at most [`PURGE_BATCH`] records whose last time is before `cutoff`; the count
/// deleted (fewer than the batch: nothing older is left).
pub fn purge_batch(conn: &mut DbConn, cutoff: i64) -> Result<usize, DbError> {
    let ids: Vec<i64> = audit_events::table
        .filter(audit_events::last_at.lt(cutoff))
        .order(audit_events::id.asc())
        .limit(PURGE_BATCH)
        .select(audit_events::id)
        .load(conn)?;
    if ids.is_empty() {
        return Ok(0);
    }
    retry_lost_races(|| {
        diesel::delete(audit_events::table.filter(audit_events::id.eq_any(&ids)))
            .execute(conn)
            .map_err(DbError::from)
    })
}
