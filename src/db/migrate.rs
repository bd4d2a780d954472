use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{DbConn, DbError};

const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const MYSQL: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// The PostgreSQL advisory lock and MariaDB named lock held while migrating ("tokenmg").
const POSTGRES_LOCK: i64 = 0x0074_6f6b_656e_6d67;
const MYSQL_LOCK: &str = "tokenmanager_migrations";
/// How often a replica tries the PostgreSQL lock while another migrates.
const POSTGRES_LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a replica waits for another's migrations before giving up.
const MYSQL_LOCK_WAIT_SECONDS: u32 = 300;

#[derive(QueryableByName)]
struct LockResult {
    #[diesel(sql_type = Nullable<BigInt>)]
    result: Option<i64>,
}

/// Applies the pending migrations of the connection's backend; returns the versions applied.
/// Replicas that start together take turns (a database lock held on this connection), so that
/// none sees a migration half applied by another; SQLite is served by one process at a time.
pub fn run_migrations(conn: &mut DbConn) -> Result<Vec<String>, DbError> {
    fn versions(
        applied: Result<
            Vec<diesel::migration::MigrationVersion<'_>>,
            Box<dyn std::error::Error + Send + Sync>,
        >,
    ) -> Result<Vec<String>, DbError> {
        applied
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(|e| DbError::Migration(e.to_string()))
    }
    match conn {
        DbConn::Sqlite(c) => versions(c.run_pending_migrations(SQLITE)),
        DbConn::Postgres(c) => {
            // Tried, not waited for in one statement: a replica waiting inside a statement
            // holds a snapshot, which CREATE INDEX CONCURRENTLY (2026-12-03-000002) waits for
            // while its migrator holds the lock: a deadlock. Between tries it holds none.
            loop {
                let locked = diesel::sql_query(format!(
                    "SELECT CASE WHEN pg_try_advisory_lock({POSTGRES_LOCK}) THEN 1::int8 ELSE 0::int8 END AS result"
                ))
                .get_result::<LockResult>(c)?;
                if locked.result == Some(1) {
                    break;
                }
                std::thread::sleep(POSTGRES_LOCK_RETRY);
            }
            let applied = versions(c.run_pending_migrations(POSTGRES));
            diesel::sql_query(format!("SELECT pg_advisory_unlock({POSTGRES_LOCK})")).execute(c)?;
            applied
        }
        DbConn::Mysql(c) => {
            let locked = diesel::sql_query(format!(
                "SELECT GET_LOCK('{MYSQL_LOCK}', {MYSQL_LOCK_WAIT_SECONDS}) AS result"
            ))
            .get_result::<LockResult>(c)?;
            if locked.result != Some(1) {
                return Err(DbError::Migration(format!(
                    "another process held the migration lock for {MYSQL_LOCK_WAIT_SECONDS} s"
                )));
            }
            let applied = versions(c.run_pending_migrations(MYSQL));
            diesel::sql_query(format!("SELECT RELEASE_LOCK('{MYSQL_LOCK}') AS result"))
                .get_result::<LockResult>(c)?;
            applied
        }
    }
}
