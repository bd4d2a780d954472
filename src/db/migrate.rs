use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

use super::{DbConn, DbError};

/// Applies the pending migrations of the connection's backend; returns the versions applied.
/// Replicas that start together take turns (a database lock held on this connection), so that
/// none sees a migration half applied by another; SQLite is served by one process at a time.
pub fn run_migrations(conn: &mut DbConn) -> Result<Vec<String>, DbError> {
    match conn {
        #[cfg(feature = "sqlite")]
        DbConn::Sqlite(c) => apply(c, SQLITE),
        #[cfg(feature = "postgres")]
        DbConn::Postgres(c) => postgres::run(c),
        #[cfg(feature = "mysql")]
        DbConn::Mysql(c) => mysql::run(c),
    }
}

#[cfg(feature = "sqlite")]
const SQLITE: EmbeddedMigrations = diesel_migrations::embed_migrations!("migrations/sqlite");

fn apply<C: MigrationHarness<B>, B: diesel::backend::Backend>(
    conn: &mut C,
    migrations: EmbeddedMigrations,
) -> Result<Vec<String>, DbError> {
    conn.run_pending_migrations(migrations)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| DbError::Migration(e.to_string()))
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
#[derive(diesel::QueryableByName)]
struct LockResult {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    result: Option<i64>,
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::Duration;

    use diesel::prelude::*;
    use diesel_migrations::{EmbeddedMigrations, embed_migrations};

    use super::{DbError, LockResult, apply};

    const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
    /// The advisory lock held while migrating ("tokenmg").
    const LOCK: i64 = 0x0074_6f6b_656e_6d67;
    /// How often a replica tries the lock while another migrates.
    const LOCK_RETRY: Duration = Duration::from_millis(100);

    pub(super) fn run(c: &mut PgConnection) -> Result<Vec<String>, DbError> {
        // Tried, not waited for in one statement: a replica waiting inside a statement
        // holds a snapshot, which CREATE INDEX CONCURRENTLY (2026-12-03-000002) waits for
        // while its migrator holds the lock: a deadlock. Between tries it holds none.
        loop {
            let locked = diesel::sql_query(format!(
                "SELECT CASE WHEN pg_try_advisory_lock({LOCK}) THEN 1::int8 ELSE 0::int8 END AS result"
            ))
            .get_result::<LockResult>(c)?;
            if locked.result == Some(1) {
                break;
            }
            std::thread::sleep(LOCK_RETRY);
        }
        let applied = apply(c, MIGRATIONS);
        diesel::sql_query(format!("SELECT pg_advisory_unlock({LOCK})")).execute(c)?;
        applied
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use diesel::prelude::*;
    use diesel_migrations::{EmbeddedMigrations, embed_migrations};

    use super::{DbError, LockResult, apply};

    const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");
    /// The named lock held while migrating.
    const LOCK: &str = "tokenmanager_migrations";
    /// How long a replica waits for another's migrations before giving up.
    const LOCK_WAIT_SECONDS: u32 = 300;

    pub(super) fn run(c: &mut MysqlConnection) -> Result<Vec<String>, DbError> {
        let locked = diesel::sql_query(format!(
            "SELECT GET_LOCK('{LOCK}', {LOCK_WAIT_SECONDS}) AS result"
        ))
        .get_result::<LockResult>(c)?;
        if locked.result != Some(1) {
            return Err(DbError::Migration(format!(
                "another process held the migration lock for {LOCK_WAIT_SECONDS} s"
            )));
        }
        let applied = apply(c, MIGRATIONS);
        diesel::sql_query(format!("SELECT RELEASE_LOCK('{LOCK}') AS result"))
            .get_result::<LockResult>(c)?;
        applied
    }
}
