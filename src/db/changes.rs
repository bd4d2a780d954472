//! The change stream: every change of a credential or of a shared client token, announced by the
//! database itself (triggers, see `migrations/*/2026-12-03-000001_change_announcements`), read
//! here on a connection of its own outside the pool.
//!
//! - PostgreSQL: the triggers `NOTIFY` channel [`CHANNEL`] when the writing transaction
//!   commits, in commit order. The reader also notifies a channel of its own now and then: when
//!   that notification comes back, every change committed before it was sent has been read.
//! - MariaDB: the triggers append to `token_changes`, read from the last id seen. An id is
//!   allocated when its row is written, not when its transaction commits, so a later id can
//!   become visible first: an id skipped over is a gap, looked at again on every read until its
//!   row appears or is known never to come (no row, and no transaction holding one under a lock,
//!   for a grace period).
//! - SQLite: the same table; one writer at a time, so ids become visible in order.

#[cfg(any(feature = "mysql", feature = "sqlite"))]
mod change_log;

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::{CredentialVersion, DbConn, DbError, establish};
use crate::config::{Backend, DatabaseUrl};

/// The PostgreSQL channel the triggers announce changes on.
pub const CHANNEL: &str = "tokenmanager_changes";
/// The `application_name` of the reader's PostgreSQL session (what an operator sees in
/// `pg_stat_activity`).
pub const READER_APPLICATION_NAME: &str = "tokenmanager-changes";
/// How long change-log rows are kept: a replica whose reader was away longer may have missed
/// changes, and treats that as a gap.
pub const LOG_RETENTION: Duration = Duration::from_secs(600);
/// Rows deleted per pruning transaction.
const PRUNE_BATCH: usize = 10_000;

/// What changed: a credential (`subject` is its user id) or a shared client token (`subject` is
/// its token key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Credential,
    Client,
}

/// One announced change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    pub subject: String,
    pub provider: String,
    pub row_id: i64,
    /// The row's generation after the change; `None`: the row is gone.
    pub generation: Option<i64>,
}

impl Change {
    /// The version the row has now; `None` if it is gone.
    pub fn version(&self) -> Option<CredentialVersion> {
        self.generation.map(|generation| CredentialVersion {
            id: self.row_id,
            generation,
        })
    }
}

/// What one read of the stream found.
#[derive(Debug, Default)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    /// Every change committed before this instant is in this batch or an earlier one.
    pub complete_as_of: Option<Instant>,
    /// Changes may have been lost before this batch (a new PostgreSQL session, or a change log
    /// pruned past the reader's position): what was cached before it must be confirmed again.
    pub gap: bool,
}

/// Reads the change stream of one database. Its session is opened on the first read and again
/// after an error.
pub struct ChangeReader {
    url: DatabaseUrl,
    conn: Option<DbConn>,
    /// PostgreSQL: this reader's own channel, and the number of its last notification.
    sync_channel: String,
    #[cfg(feature = "postgres")]
    syncs_sent: u64,
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    log: change_log::LogReader,
}

impl ChangeReader {
    /// A reader of `url`'s stream from now on; `instance` makes its PostgreSQL channel its own.
    pub fn new(url: &DatabaseUrl, instance: u64) -> Self {
        Self {
            url: url.clone(),
            conn: None,
            sync_channel: format!("tokenmanager_sync_{instance:016x}"),
            #[cfg(feature = "postgres")]
            syncs_sent: 0,
            #[cfg(any(feature = "mysql", feature = "sqlite"))]
            log: change_log::LogReader::default(),
        }
    }

    /// The changes committed since the last read. On PostgreSQL, what has been delivered; with
    /// `confirm`, up to a notification of its own (a round trip, a commit). An error leaves the
    /// session closed; the next read opens a new one (on PostgreSQL with `gap` set:
    /// notifications sent meanwhile are lost).
    pub fn read(&mut self, confirm: bool) -> Result<ChangeBatch, DbError> {
        let result = self.read_on_session(confirm);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn read_on_session(
        &mut self,
        #[cfg_attr(
            not(feature = "postgres"),
            expect(unused_variables, reason = "only notifications are confirmed")
        )]
        confirm: bool,
    ) -> Result<ChangeBatch, DbError> {
        let opened = self.conn.is_none();
        if opened {
            self.conn = Some(self.open()?);
        }
        match self.conn.as_mut().expect("opened above") {
            #[cfg(feature = "postgres")]
            DbConn::Postgres(conn) => {
                let sync =
                    (confirm || opened).then_some((&*self.sync_channel, &mut self.syncs_sent));
                let mut batch = read_notifications(conn, sync)?;
                // A new session listens from now on: what was announced before it is lost.
                batch.gap = opened;
                Ok(batch)
            }
            #[cfg(any(feature = "mysql", feature = "sqlite"))]
            _ => self.log.read(self.conn.as_mut().expect("opened above")),
        }
    }

    fn open(&self) -> Result<DbConn, DbError> {
        let session = match self.url.backend() {
            // Its own notifications are commits that nothing needs on disk.
            Backend::Postgres => Some(format!(
                "SET application_name = '{READER_APPLICATION_NAME}'; SET synchronous_commit = off; \
                 LISTEN {CHANNEL}; LISTEN {}",
                self.sync_channel
            )),
            // Each read sees what is committed when it starts, and takes no gap locks.
            Backend::Mysql => {
                Some("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_owned())
            }
            Backend::Sqlite => None,
        };
        let mut conn = match self.url.backend() {
            #[cfg(feature = "postgres")]
            Backend::Postgres => DbConn::Postgres(
                PgConnection::establish(&with_tcp_deadlines(self.url.expose())).map_err(
                    |source| DbError::Connect {
                        url: self.url.masked(),
                        source,
                    },
                )?,
            ),
            _ => establish(&self.url)?,
        };
        if let Some(session) = session {
            conn.batch_execute(&session)?;
        }
        Ok(conn)
    }

    /// Deletes change-log rows older than [`LOG_RETENTION`] (by the database's clock), in
    /// batches: each a short transaction, so that a log grown by a bulk import never holds
    /// SQLite's write lock (or MariaDB's undo) for long. Returns how many.
    pub fn prune(&mut self) -> Result<usize, DbError> {
        let retention = LOG_RETENTION.as_secs();
        let statement = match self.conn.as_ref().map(DbConn::backend) {
            Some(Backend::Mysql) => format!(
                "DELETE FROM token_changes WHERE created_at < UNIX_TIMESTAMP() - {retention} \
                 LIMIT {PRUNE_BATCH}"
            ),
            Some(Backend::Sqlite) => format!(
                "DELETE FROM token_changes WHERE id IN (SELECT id FROM token_changes \
                 WHERE created_at < unixepoch() - {retention} LIMIT {PRUNE_BATCH})"
            ),
            Some(Backend::Postgres) | None => return Ok(0),
        };
        let conn = self.conn.as_mut().expect("matched above");
        let mut pruned = 0;
        loop {
            let deleted = diesel::sql_query(&statement).execute(conn)?;
            pruned += deleted;
            if deleted < PRUNE_BATCH {
                return Ok(pruned);
            }
        }
    }
}

/// libpq's TCP deadlines for the reader's session, unless the URL sets its own: a server or
/// network gone silent fails its next read or write within seconds rather than at the system's
/// TCP timeout (about 15 min), so the feed reconnects as soon as the database is back.
#[cfg(feature = "postgres")]
fn with_tcp_deadlines(url: &str) -> String {
    if url.contains("keepalives") || url.contains("tcp_user_timeout") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{separator}keepalives=1&keepalives_idle=5&keepalives_interval=1&keepalives_count=3&tcp_user_timeout=5000"
    )
}

/// Takes the notifications delivered so far. With `sync` (this reader's channel and count), it
/// first sends one of its own and takes everything up to it: the server delivers notifications
/// in commit order, so when it is back, every change committed before it was sent has been read.
#[cfg(feature = "postgres")]
fn read_notifications(
    conn: &mut PgConnection,
    sync: Option<(&str, &mut u64)>,
) -> Result<ChangeBatch, DbError> {
    let mut batch = ChangeBatch::default();
    let mut expected = None;
    if let Some((channel, sent_count)) = sync {
        *sent_count += 1;
        let sent = Instant::now();
        conn.batch_execute(&format!("NOTIFY {channel}, '{sent_count}'"))?;
        expected = Some((channel, sent_count.to_string(), sent));
    }
    // Our own notification comes back with the reply to NOTIFY; later ones are read next time.
    for notification in conn.notifications_iter() {
        let notification = notification?;
        if notification.channel.starts_with("tokenmanager_sync_") {
            if let Some((channel, payload, sent)) = &expected
                && notification.channel == *channel
                && notification.payload == *payload
            {
                batch.complete_as_of = Some(*sent);
            }
            continue;
        }
        match serde_json::from_str::<Change>(&notification.payload) {
            Ok(change) => batch.changes.push(change),
            Err(error) => {
                tracing::error!(%error, "an announcement on {CHANNEL} that is not a change; a cache may be stale until its next gap");
            }
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "postgres")]
    #[test]
    fn the_readers_postgresql_session_gets_tcp_deadlines_unless_the_url_sets_them() {
        assert_eq!(
            with_tcp_deadlines("postgres://h/db"),
            "postgres://h/db?keepalives=1&keepalives_idle=5&keepalives_interval=1&keepalives_count=3&tcp_user_timeout=5000"
        );
        assert!(
            with_tcp_deadlines("postgres://h/db?sslmode=require")
                .starts_with("postgres://h/db?sslmode=require&keepalives=1")
        );
        assert_eq!(
            with_tcp_deadlines("postgres://h/db?tcp_user_timeout=1000"),
            "postgres://h/db?tcp_user_timeout=1000"
        );
    }

    #[test]
    fn a_notification_payload_is_a_change() {
        let payload = r#"{"kind" : "credential", "subject" : "alice", "provider" : "IAM", "row_id" : 7, "generation" : null}"#;
        let change: Change = serde_json::from_str(payload).unwrap();
        assert_eq!(change.kind, ChangeKind::Credential);
        assert_eq!(change.version(), None);
        let payload = r#"{"kind" : "client", "subject" : "ab12", "provider" : "IAM", "row_id" : 3, "generation" : 4}"#;
        let change: Change = serde_json::from_str(payload).unwrap();
        assert_eq!(
            change.version(),
            Some(CredentialVersion {
                id: 3,
                generation: 4
            })
        );
    }
}
