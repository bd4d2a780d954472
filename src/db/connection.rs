use std::time::Duration;

#[cfg(feature = "mysql")]
use diesel::MysqlConnection;
#[cfg(feature = "postgres")]
use diesel::PgConnection;
#[cfg(feature = "sqlite")]
use diesel::SqliteConnection;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::DbError;
use crate::config::{Backend, DatabaseUrl};

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("tokenmanager needs at least one of the features sqlite, postgres and mysql");

/// One connection type for the backends built in; queries written once against it run on each.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteConnection),
    #[cfg(feature = "postgres")]
    Postgres(PgConnection),
    #[cfg(feature = "mysql")]
    Mysql(MysqlConnection),
}

impl DbConn {
    /// Which backend this is: code that differs only in its SQL matches on this, and compiles
    /// whichever backends are built in.
    pub fn backend(&self) -> Backend {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => Backend::Sqlite,
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => Backend::Postgres,
            #[cfg(feature = "mysql")]
            Self::Mysql(_) => Backend::Mysql,
        }
    }

    /// A trivial query: is the database reachable?
    pub fn ping(&mut self) -> Result<(), DbError> {
        self.batch_execute("SELECT 1").map_err(DbError::Query)
    }
}

/// Opens one connection of the backend the URL names (the pool's, or one a task keeps for
/// itself).
pub fn establish(url: &DatabaseUrl) -> Result<DbConn, DbError> {
    let connect_error = |source: ConnectionError| DbError::Connect {
        url: url.masked(),
        source,
    };
    match url.backend() {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let path = url.sqlite_path().expect("checked by the backend");
            let mut conn = SqliteConnection::establish(path).map_err(connect_error)?;
            // busy_timeout first: the other pragmas may already wait for a lock.
            conn.batch_execute(
                "PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; \
                 PRAGMA foreign_keys = ON;",
            )
            .map_err(DbError::Query)?;
            Ok(DbConn::Sqlite(conn))
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => PgConnection::establish(url.expose())
            .map(DbConn::Postgres)
            .map_err(connect_error),
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            let mut conn =
                MysqlConnection::establish(&mysql_scheme(url.expose())).map_err(connect_error)?;
            conn.batch_execute("SET NAMES utf8mb4")
                .map_err(DbError::Query)?;
            Ok(DbConn::Mysql(conn))
        }
        // A URL that did not come through `DatabaseUrl::parse` (DIRAC's Host/User/DBName
        // settings make a mysql:// one).
        #[cfg(not(all(feature = "sqlite", feature = "postgres", feature = "mysql")))]
        not_built_in => Err(crate::config::UrlError::NotBuiltIn(not_built_in).into()),
    }
}

/// libmysqlclient knows only the mysql:// scheme; mariadb:// is accepted as its alias.
#[cfg(feature = "mysql")]
pub(super) fn mysql_scheme(url: &str) -> String {
    match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_owned(),
    }
}

/// The r2d2 manager: connects with the backend the URL named, so a refused connection or a wrong
/// password reaches the operator as itself.
pub struct DbManager {
    url: DatabaseUrl,
}

impl r2d2::ManageConnection for DbManager {
    type Connection = DbConn;
    type Error = DbError;

    fn connect(&self) -> Result<DbConn, DbError> {
        establish(&self.url)
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), DbError> {
        conn.ping()
    }

    fn has_broken(&self, _: &mut DbConn) -> bool {
        false
    }
}

pub type DbPool = r2d2::Pool<DbManager>;

#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    pub max_size: u32,
    pub connection_timeout: Duration,
    /// How long a caller waits for a database operation (see `actors::db`).
    pub deadline: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 8,
            connection_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(5),
        }
    }
}

/// Builds the pool without waiting for the database (r2d2's `build` would block for the whole
/// connection timeout when it is down); readiness is checked by the caller with a ping.
pub fn build_pool(url: &DatabaseUrl, options: PoolOptions) -> Result<DbPool, DbError> {
    if url.backend() == Backend::Sqlite {
        // WAL is a property of the file: set it once here, not per pooled connection, where
        // parallel opens race for the lock.
        establish(url)?
            .batch_execute("PRAGMA journal_mode = WAL")
            .map_err(DbError::Query)?;
    }
    Ok(r2d2::Pool::builder()
        .max_size(options.max_size)
        .min_idle(Some(0))
        .connection_timeout(options.connection_timeout)
        .build_unchecked(DbManager { url: url.clone() }))
}
