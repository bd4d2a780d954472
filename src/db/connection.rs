use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::{MysqlConnection, PgConnection, SqliteConnection};

use super::DbError;

/// One connection type for the three backends; queries written once against it run on each.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
    Mysql(MysqlConnection),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }
}

/// A database URL whose scheme picked the backend. Unknown schemes are refused rather than taken
/// for SQLite file names (which is what diesel's derived `establish` would do).
#[derive(Clone)]
pub struct DatabaseUrl {
    backend: Backend,
    url: String,
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, DbError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| DbError::BadUrl {
            url: mask_password(url),
            problem: "expected <scheme>://…".into(),
        })?;
        let backend = match scheme {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            "mysql" | "mariadb" => Backend::Mysql,
            other => {
                return Err(DbError::BadUrl {
                    url: mask_password(url),
                    problem: format!(
                        "unsupported scheme '{other}' (use sqlite://, postgres:// or mysql://)"
                    ),
                });
            }
        };
        if backend == Backend::Sqlite && (rest.is_empty() || rest.starts_with(':')) {
            return Err(DbError::BadUrl {
                url: url.to_owned(),
                problem: "SQLite needs a file path (an in-memory database would differ per \
                          pooled connection)"
                    .into(),
            });
        }
        let url = match backend {
            // libmysqlclient only knows mysql://.
            Backend::Mysql => format!("mysql://{rest}"),
            _ => url.to_owned(),
        };
        Ok(Self { backend, url })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite database file (None for server backends).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        (self.backend == Backend::Sqlite).then(|| PathBuf::from(&self.url["sqlite://".len()..]))
    }

    /// For logs: the URL with any password replaced.
    pub fn redacted(&self) -> String {
        mask_password(&self.url)
    }

    pub(super) fn establish(&self) -> Result<DbConn, DbError> {
        let connect_error = |source: ConnectionError| DbError::Connect {
            url: self.redacted(),
            source,
        };
        match self.backend {
            Backend::Sqlite => {
                let path = self.sqlite_path().expect("checked by the backend");
                let mut conn =
                    SqliteConnection::establish(&path.to_string_lossy()).map_err(connect_error)?;
                // busy_timeout first: the other pragmas may already wait for a lock.
                conn.batch_execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; \
                     PRAGMA foreign_keys = ON;",
                )
                .map_err(DbError::Query)?;
                Ok(DbConn::Sqlite(conn))
            }
            Backend::Postgres => PgConnection::establish(&self.url)
                .map(DbConn::Postgres)
                .map_err(connect_error),
            Backend::Mysql => {
                let mut conn = MysqlConnection::establish(&self.url).map_err(connect_error)?;
                conn.batch_execute("SET NAMES utf8mb4")
                    .map_err(DbError::Query)?;
                Ok(DbConn::Mysql(conn))
            }
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
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
        self.url.establish()
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), DbError> {
        conn.batch_execute("SELECT 1").map_err(DbError::Query)
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
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 8,
            connection_timeout: Duration::from_secs(5),
        }
    }
}

/// Builds the pool without waiting for the database (r2d2's `build` would block for the whole
/// connection timeout when it is down); readiness is checked by the caller with a ping.
pub fn build_pool(url: &DatabaseUrl, options: PoolOptions) -> Result<DbPool, DbError> {
    if url.backend == Backend::Sqlite {
        // WAL is a property of the file: set it once here, not per pooled connection, where
        // parallel opens race for the lock.
        url.establish()?
            .batch_execute("PRAGMA journal_mode = WAL")
            .map_err(DbError::Query)?;
    }
    Ok(r2d2::Pool::builder()
        .max_size(options.max_size)
        .min_idle(Some(0))
        .connection_timeout(options.connection_timeout)
        .build_unchecked(DbManager { url: url.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_backend_and_unknown_schemes_are_refused() {
        let cases = [
            ("sqlite:///var/tm.db", Backend::Sqlite),
            ("postgres://u@h/db", Backend::Postgres),
            ("postgresql://u@h/db", Backend::Postgres),
            ("mysql://u@h/db", Backend::Mysql),
            ("mariadb://u@h/db", Backend::Mysql),
        ];
        for (url, backend) in cases {
            assert_eq!(DatabaseUrl::parse(url).unwrap().backend(), backend, "{url}");
        }
        for bad in ["redis://h", "/var/tm.db", "sqlite://", "sqlite://:memory:"] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/tm.db")
                .unwrap()
                .sqlite_path(),
            Some(PathBuf::from("/var/tm.db"))
        );
    }

    #[test]
    fn passwords_never_reach_logs_or_errors() {
        let url = DatabaseUrl::parse("mysql://dirac:p%40ss@db:3306/TokenDB").unwrap();
        assert_eq!(url.redacted(), "mysql://dirac:***@db:3306/TokenDB");
        assert!(!format!("{url:?}").contains("p%40ss"));
        let err = DatabaseUrl::parse("oracle://dirac:hunter2@db/x")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(mask_password("postgres://h/db"), "postgres://h/db");
    }
}
