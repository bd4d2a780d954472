//! Replica liveness through the database. Each replica on PostgreSQL or MariaDB holds a session
//! lock named after its lease owner id, on one connection of its own outside the pool; the
//! server drops the lock with the session when the process dies, however it dies. A replica
//! waiting for another's refresh lease asks whether its holder still holds its lock.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};

use super::schema::{client_tokens, tokens};
use super::{DbConn, DbError};

/// The part of a lease owner id that says its process holds a liveness lock while it lives:
/// without it (SQLite, or a release before liveness locks) a lease is left to its expiry.
pub const LIVENESS_MARK: &str = "+live";

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = Nullable<BigInt>)]
    number: Option<i64>,
}

/// The lock key of `owner`: the first 8 bytes of its SHA-256.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn lock_key(owner: &str) -> i64 {
    let digest = openssl::sha::sha256(owner.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Takes `owner`'s liveness lock on `conn`, without waiting; false if another session holds it
/// (one of this process that the server has not closed yet).
pub fn take_liveness_lock(
    conn: &mut DbConn,
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql")),
        expect(unused_variables, reason = "SQLite has no liveness locks")
    )]
    owner: &str,
) -> Result<bool, DbError> {
    match conn {
        #[cfg(feature = "postgres")]
        DbConn::Postgres(c) => postgres::take_lock(c, owner),
        #[cfg(feature = "mysql")]
        DbConn::Mysql(c) => mysql::take_lock(c, owner),
        #[cfg(feature = "sqlite")]
        DbConn::Sqlite(_) => Ok(true),
    }
}

/// Whether some session holds `owner`'s liveness lock.
fn holds_liveness_lock(
    conn: &mut DbConn,
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql")),
        expect(unused_variables, reason = "SQLite has no liveness locks")
    )]
    owner: &str,
) -> Result<bool, DbError> {
    match conn {
        #[cfg(feature = "postgres")]
        DbConn::Postgres(c) => postgres::lock_held(c, owner),
        #[cfg(feature = "mysql")]
        DbConn::Mysql(c) => mysql::lock_held(c, owner),
        #[cfg(feature = "sqlite")]
        DbConn::Sqlite(_) => Ok(true),
    }
}

/// The database's clock, in Unix seconds: leases are compared with one clock, whatever the
/// replicas' clocks say.
pub fn database_now(conn: &mut DbConn) -> Result<i64, DbError> {
    let query = match conn {
        #[cfg(feature = "postgres")]
        DbConn::Postgres(_) => "SELECT CAST(EXTRACT(EPOCH FROM now()) AS BIGINT) AS number",
        #[cfg(feature = "mysql")]
        DbConn::Mysql(_) => "SELECT CAST(UNIX_TIMESTAMP() AS SIGNED) AS number",
        #[cfg(feature = "sqlite")]
        DbConn::Sqlite(_) => "SELECT CAST(strftime('%s', 'now') AS INTEGER) AS number",
    };
    diesel::sql_query(query)
        .get_result::<Number>(conn)?
        .number
        .ok_or_else(|| DbError::Query(diesel::result::Error::NotFound))
}

#[derive(QueryableByName)]
struct Session {
    #[diesel(sql_type = diesel::sql_types::Text)]
    session: String,
}

/// The other client sessions on this database (PostgreSQL, MariaDB), each as `user@host` and,
/// on PostgreSQL, its `application_name`: what tells a command that a `serve` may still be
/// writing (each replica keeps a liveness and a pooled session there). Nothing tells a serve
/// from another client, so any session counts. MariaDB shows other accounts' sessions only to
/// an account with the PROCESS privilege; a serve using the same account is always seen. SQLite
/// has no sessions: its serve lock says whether a serve runs ([`super::SqliteServeLock`]).
pub fn other_sessions(conn: &mut DbConn) -> Result<Vec<String>, DbError> {
    let query: Option<&str> = match conn {
        #[cfg(feature = "postgres")]
        DbConn::Postgres(_) => Some(
            "SELECT usename::text || '@' || COALESCE(host(client_addr), 'local') || ' (' || \
             COALESCE(NULLIF(application_name, ''), '-') || ')' AS session FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_type = 'client backend' ORDER BY 1",
        ),
        #[cfg(feature = "mysql")]
        DbConn::Mysql(_) => Some(
            "SELECT CONCAT(USER, '@', HOST) AS session FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND ID <> CONNECTION_ID() ORDER BY 1",
        ),
        #[cfg(feature = "sqlite")]
        DbConn::Sqlite(_) => None,
    };
    let Some(query) = query else {
        return Ok(Vec::new());
    };
    Ok(diesel::sql_query(query)
        .load::<Session>(conn)?
        .into_iter()
        .map(|s| s.session)
        .collect())
}

#[cfg(feature = "postgres")]
mod postgres {
    use diesel::prelude::*;
    use diesel::sql_types::Bool;

    use super::{DbError, lock_key};

    #[derive(QueryableByName)]
    struct Flag {
        #[diesel(sql_type = Bool)]
        flag: bool,
    }

    pub(super) fn take_lock(c: &mut PgConnection, owner: &str) -> Result<bool, DbError> {
        Ok(diesel::sql_query(format!(
            "SELECT pg_try_advisory_lock({}) AS flag",
            lock_key(owner)
        ))
        .get_result::<Flag>(c)?
        .flag)
    }

    pub(super) fn lock_held(c: &mut PgConnection, owner: &str) -> Result<bool, DbError> {
        // A bigint key shows as its high half in classid, its low half in objid.
        let key = lock_key(owner) as u64;
        let (high, low) = (key >> 32, key & 0xffff_ffff);
        Ok(diesel::sql_query(format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid::bigint = {high} AND objid::bigint = {low} AND objsubid = 1) AS flag"
        ))
        .get_result::<Flag>(c)?
        .flag)
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use diesel::prelude::*;

    use super::{DbError, Number, lock_key};

    /// The lock name of `owner` (names are limited to 64 characters).
    fn name(owner: &str) -> String {
        format!("tokenmanager_live_{:016x}", lock_key(owner))
    }

    pub(super) fn take_lock(c: &mut MysqlConnection, owner: &str) -> Result<bool, DbError> {
        let taken = diesel::sql_query(format!("SELECT GET_LOCK('{}', 0) AS number", name(owner)))
            .get_result::<Number>(c)?;
        Ok(taken.number == Some(1))
    }

    pub(super) fn lock_held(c: &mut MysqlConnection, owner: &str) -> Result<bool, DbError> {
        let holder = diesel::sql_query(format!(
            "SELECT CAST(IS_USED_LOCK('{}') AS SIGNED) AS number",
            name(owner)
        ))
        .get_result::<Number>(c)?;
        Ok(holder.number.is_some())
    }
}

/// Which lease a replica waits for.
#[derive(Clone, Copy, Debug)]
pub enum LeasedRow {
    Credential(i64),
    ClientToken(i64),
}

/// The owner of the lease on `row`, if it is a replica that has lost its liveness lock (its
/// process is gone).
pub fn dead_lease_holder(conn: &mut DbConn, row: LeasedRow) -> Result<Option<String>, DbError> {
    let owner: Option<Option<String>> = match row {
        LeasedRow::Credential(id) => tokens::table
            .filter(tokens::id.eq(id))
            .select(tokens::lease_owner)
            .first(conn)
            .optional()?,
        LeasedRow::ClientToken(id) => client_tokens::table
            .filter(client_tokens::id.eq(id))
            .select(client_tokens::lease_owner)
            .first(conn)
            .optional()?,
    };
    let Some(owner) = owner.flatten().filter(|o| o.ends_with(LIVENESS_MARK)) else {
        return Ok(None);
    };
    Ok((!holds_liveness_lock(conn, &owner)?).then_some(owner))
}
