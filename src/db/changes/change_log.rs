//! The change log of MariaDB and SQLite: the `token_changes` table, read from the last id seen.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

use super::{Change, ChangeBatch, ChangeKind, DbConn, DbError, LOG_RETENTION};
use crate::config::Backend;

/// How long an id skipped over on MariaDB is looked for when neither its row nor a transaction
/// writing it is seen: longer than an insert takes between allocating an id and writing its row.
const GAP_GRACE: Duration = Duration::from_secs(2);
/// Gaps beyond this many (a burst of rolled-back writes) are given up as a gap in the stream.
const MAX_GAPS: usize = 10_000;
/// Rows read per query: a reader that is further behind reads again at once.
const READ_BATCH: i64 = 5_000;

#[derive(QueryableByName)]
struct LogRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Text)]
    provider: String,
    #[diesel(sql_type = BigInt)]
    row_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    generation: Option<i64>,
}

impl LogRow {
    fn change(self) -> Option<Change> {
        let kind = match self.kind.as_str() {
            "credential" => ChangeKind::Credential,
            "client" => ChangeKind::Client,
            _ => return None,
        };
        Some(Change {
            kind,
            subject: self.subject,
            provider: self.provider,
            row_id: self.row_id,
            generation: self.generation,
        })
    }
}

#[derive(QueryableByName)]
struct MaxId {
    #[diesel(sql_type = Nullable<BigInt>)]
    id: Option<i64>,
}

const LOG_COLUMNS: &str = "id, kind, subject, provider, row_id, generation";

/// Where a reader is in the log.
#[derive(Default)]
pub(super) struct LogReader {
    /// The highest id read, and the ids below it not seen yet.
    position: Option<i64>,
    gaps: BTreeMap<i64, Instant>,
    /// When the log was last read: a reader away for longer than the retention has a gap.
    last_read: Option<Instant>,
}

impl LogReader {
    pub(super) fn read(&mut self, conn: &mut DbConn) -> Result<ChangeBatch, DbError> {
        let started = Instant::now();
        let mut batch = ChangeBatch::default();
        let Some(position) = self.position else {
            // The first read: the stream starts after what is there.
            let max: MaxId =
                diesel::sql_query("SELECT MAX(id) AS id FROM token_changes").get_result(conn)?;
            self.position = Some(max.id.unwrap_or(0));
            self.last_read = Some(started);
            batch.complete_as_of = Some(started);
            return Ok(batch);
        };
        let rows: Vec<LogRow> = diesel::sql_query(format!(
            "SELECT {LOG_COLUMNS} FROM token_changes WHERE id > ? ORDER BY id LIMIT {READ_BATCH}"
        ))
        .bind::<BigInt, _>(position)
        .load(conn)?;
        let caught_up = (rows.len() as i64) < READ_BATCH;
        let is_mysql = conn.backend() == Backend::Mysql;
        let mut last = position;
        for row in rows {
            if is_mysql {
                for skipped in last + 1..row.id {
                    self.gaps.insert(skipped, started);
                }
            }
            last = row.id;
            batch.changes.extend(row.change());
        }
        self.position = Some(last);
        if !self.gaps.is_empty() {
            self.read_gaps(conn, &mut batch)?;
        }
        let away = self
            .last_read
            .is_some_and(|at| started - at > LOG_RETENTION / 2);
        batch.gap = away || self.gaps.len() > MAX_GAPS;
        if self.gaps.len() > MAX_GAPS {
            self.gaps.clear();
        }
        self.last_read = Some(started);
        // Everything committed before the read started is in it; a gap still open is a
        // transaction that had not committed then.
        batch.complete_as_of = caught_up.then_some(started);
        Ok(batch)
    }

    /// Looks at the gaps again: a row committed since is read; a gap older than [`GAP_GRACE`]
    /// whose row no transaction holds (a rolled-back write, an id never used — on a Galera
    /// cluster, the other nodes' ids) is closed. One or two queries, however many gaps; one per
    /// old gap only while some transaction holds one.
    fn read_gaps(&mut self, conn: &mut DbConn, batch: &mut ChangeBatch) -> Result<(), DbError> {
        let ids = |gaps: &mut dyn Iterator<Item = i64>| {
            gaps.map(|id| id.to_string()).collect::<Vec<_>>().join(",")
        };
        let all = ids(&mut self.gaps.keys().copied());
        let found: Vec<LogRow> = diesel::sql_query(format!(
            "SELECT {LOG_COLUMNS} FROM token_changes WHERE id IN ({all})"
        ))
        .load(conn)?;
        for row in found {
            self.gaps.remove(&row.id);
            batch.changes.extend(row.change());
        }
        let now = Instant::now();
        let old: Vec<i64> = self
            .gaps
            .iter()
            .filter(|(_, missed)| now - **missed >= GAP_GRACE)
            .map(|(id, _)| *id)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        // NOWAIT: a row still being written is locked by its transaction, which would otherwise
        // make this wait for its commit; its gap stays open however long that takes.
        let locked_read = |conn: &mut DbConn, ids: &str| {
            diesel::sql_query(format!(
                "SELECT {LOG_COLUMNS} FROM token_changes WHERE id IN ({ids}) FOR UPDATE NOWAIT"
            ))
            .load::<LogRow>(conn)
        };
        match locked_read(conn, &ids(&mut old.iter().copied())) {
            Ok(rows) => {
                // Committed between the two reads, or never coming.
                batch
                    .changes
                    .extend(rows.into_iter().filter_map(LogRow::change));
                for id in &old {
                    self.gaps.remove(id);
                }
            }
            Err(error) if is_lock_wait(&error) => {
                for id in old {
                    match locked_read(conn, &id.to_string()) {
                        Ok(rows) => {
                            self.gaps.remove(&id);
                            batch
                                .changes
                                .extend(rows.into_iter().filter_map(LogRow::change));
                        }
                        Err(error) if is_lock_wait(&error) => {}
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            Err(error) => return Err(error.into()),
        }
        Ok(())
    }
}

fn is_lock_wait(error: &diesel::result::Error) -> bool {
    match error {
        diesel::result::Error::DatabaseError(_, info) => {
            let message = info.message();
            message.contains("Lock wait timeout") || message.contains("NOWAIT")
        }
        _ => false,
    }
}
