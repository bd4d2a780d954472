//! DIRAC's own TokenDB (docs/DIRAC.md#the-token-table): a MySQL `Token` table of plaintext tokens,
//! with no key on (user_id, provider). `import-dirac-tokendb` reads it, here;
//! `export-dirac-tokendb` writes our credentials back into it, in one transaction
//! ([`DiracTransaction`]). The connection is the command's own (it is not the service's database).

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{MysqlConnection, QueryableByName};

use super::connection::mysql_scheme;
use crate::config::{Backend, DatabaseUrl, UrlError};
use crate::domain::Secret;

/// Every column of docs/DIRAC.md#the-token-table but `kid` (never set by DIRAC), integers widened
/// to BIGINT. Every column is read as nullable: a NULL where DIRAC's DDL says NOT NULL (a hand-made
/// row, an older SQLAlchemy) reads as DIRAC's client-side default (0 or empty) instead of failing
/// the whole import.
const SELECT_TOKENS: &str = "SELECT CAST(id AS SIGNED) AS id, user_id, provider, \
     CAST(expires_at AS SIGNED) AS expires_at, access_token, refresh_token, \
     CAST(rt_expires_at AS SIGNED) AS rt_expires_at, client_id, token_type, scope, \
     CAST(issued_at AS SIGNED) AS issued_at, CAST(expires_in AS SIGNED) AS expires_in \
     FROM `Token` ORDER BY id";

/// What `export-dirac-tokendb` writes into DIRAC's `Token` table for one credential
/// (docs/OPERATIONS.md#switching-back-to-dirac has why each value).
#[derive(Clone, Debug)]
pub struct ExportRow {
    pub user_id: String,
    pub provider: String,
    pub refresh_token: Secret,
    pub rt_expires_at: i64,
    /// DIRAC's `expires_at`, which its `updateToken` purges by.
    pub expires_at: i64,
    pub client_id: Option<String>,
    pub token_type: Option<String>,
    pub scope: String,
    pub issued_at: i64,
}

/// One credential's change to DIRAC's table: its rows `delete` go, `insert` comes.
#[derive(Clone, Debug)]
pub struct Replacement {
    pub delete: Vec<i64>,
    pub insert: ExportRow,
}

/// DIRAC 9.1.22's `Token` table as its TokenDB creates it at start-up (SQLAlchemy 2.0's DDL for
/// `DIRAC.FrameworkSystem.DB.TokenDB.Token`, verbatim but for `IF NOT EXISTS` and whitespace): what
/// `export-dirac-tokendb` creates when DIRAC's database has no such table.
pub const CREATE_TOKEN_TABLE: &str = "CREATE TABLE IF NOT EXISTS `Token` (
  id INTEGER NOT NULL AUTO_INCREMENT,
  kid VARCHAR(255),
  user_id VARCHAR(255),
  provider VARCHAR(255),
  expires_at INTEGER NOT NULL,
  access_token TEXT NOT NULL,
  refresh_token TEXT NOT NULL,
  rt_expires_at INTEGER NOT NULL,
  client_id VARCHAR(48),
  token_type VARCHAR(40),
  scope TEXT,
  issued_at INTEGER NOT NULL,
  access_token_revoked_at INTEGER NOT NULL,
  refresh_token_revoked_at INTEGER NOT NULL,
  expires_in INTEGER NOT NULL,
  PRIMARY KEY (id)
)ENGINE=InnoDB CHARSET=utf8mb4";

#[derive(QueryableByName)]
struct RawRow {
    #[diesel(sql_type = Nullable<BigInt>)]
    id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    user_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    provider: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    expires_at: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    access_token: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    refresh_token: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    rt_expires_at: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    client_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    token_type: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    scope: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    issued_at: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    expires_in: Option<i64>,
}

/// One row of DIRAC's `Token` table. Token values are [`Secret`]s from the moment they are read.
#[derive(Clone, Debug, Default)]
pub struct DiracToken {
    pub id: i64,
    pub user_id: Option<String>,
    pub provider: Option<String>,
    pub expires_at: i64,
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub rt_expires_at: i64,
    pub client_id: Option<String>,
    pub token_type: Option<String>,
    pub scope: Option<String>,
    pub issued_at: i64,
    pub expires_in: i64,
}

impl From<RawRow> for DiracToken {
    fn from(row: RawRow) -> Self {
        Self {
            id: row.id.unwrap_or(0),
            user_id: row.user_id,
            provider: row.provider,
            expires_at: row.expires_at.unwrap_or(0),
            access_token: row.access_token.map(Secret::new),
            refresh_token: row.refresh_token.map(Secret::new),
            rt_expires_at: row.rt_expires_at.unwrap_or(0),
            client_id: row.client_id,
            token_type: row.token_type,
            scope: row.scope,
            issued_at: row.issued_at.unwrap_or(0),
            expires_in: row.expires_in.unwrap_or(0),
        }
    }
}

/// Why DIRAC's TokenDB cannot be read. No message holds the password: URLs are shown masked,
/// a refused URL only by its scheme.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "DIRAC's TokenDB is a MySQL/MariaDB database: give a mysql:// or mariadb:// URL \
         (mysql://user:password@host:port/dbname), not {0}"
    )]
    Scheme(String),
    #[error("DIRAC TokenDB URL: {0}")]
    Url(#[from] UrlError),
    #[error("cannot read the password file {path}: {source}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to DIRAC's TokenDB at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: ConnectionError,
    },
    #[error("cannot read DIRAC's Token table at {url}: {source}")]
    Query {
        url: String,
        #[source]
        source: diesel::result::Error,
    },
    #[error("cannot write DIRAC's Token table at {url}: {source}")]
    Write {
        url: String,
        #[source]
        source: diesel::result::Error,
    },
}

/// The source URL: mysql:// or mariadb:// only, with the password from `password_file` (one
/// trailing newline stripped) if one is given.
pub fn source_url(url: &str, password_file: Option<&Path>) -> Result<DatabaseUrl, SourceError> {
    let parsed = DatabaseUrl::parse(url)
        .ok()
        .filter(|parsed| parsed.backend() == Backend::Mysql)
        .ok_or_else(|| SourceError::Scheme(scheme_of(url)))?;
    let Some(path) = password_file else {
        return Ok(parsed);
    };
    let mut password =
        std::fs::read_to_string(path).map_err(|source| SourceError::PasswordFile {
            path: path.display().to_string(),
            source,
        })?;
    if password.ends_with('\n') {
        password.pop();
        if password.ends_with('\r') {
            password.pop();
        }
    }
    Ok(parsed.with_password(&password)?)
}

/// How a refused URL is named: its scheme only, since the rest may hold a password.
fn scheme_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            format!("a {scheme}:// URL")
        }
        _ => "something without a URL scheme".to_owned(),
    }
}

/// A connection to DIRAC's TokenDB, its character set that of DIRAC's tables.
fn connect(url: &DatabaseUrl) -> Result<MysqlConnection, SourceError> {
    let mut conn = MysqlConnection::establish(&mysql_scheme(url.expose())).map_err(|source| {
        SourceError::Connect {
            url: url.masked(),
            source,
        }
    })?;
    conn.batch_execute("SET NAMES utf8mb4")
        .map_err(|source| SourceError::Query {
            url: url.masked(),
            source,
        })?;
    Ok(conn)
}

/// Every row of DIRAC's `Token` table, in id order.
pub fn read_tokens(url: &DatabaseUrl) -> Result<Vec<DiracToken>, SourceError> {
    let mut conn = connect(url)?;
    let rows: Vec<RawRow> = diesel::sql_query(SELECT_TOKENS)
        .load(&mut conn)
        .map_err(|source| SourceError::Query {
            url: url.masked(),
            source,
        })?;
    Ok(rows.into_iter().map(DiracToken::from).collect())
}

/// `export-dirac-tokendb`'s transaction on DIRAC's TokenDB: it reads every row of `Token` with
/// a write lock on each (a DIRAC service still running waits for it instead of writing between
/// the read and the write), then deletes and inserts, and nothing of it is visible until
/// [`DiracTransaction::commit`]. Dropped uncommitted, its connection closes and the server rolls
/// it back.
pub struct DiracTransaction {
    conn: MysqlConnection,
    url: String,
    open: bool,
}

impl DiracTransaction {
    /// Opens the transaction and reads the table. The table is created first (DIRAC's DDL,
    /// [`CREATE_TOKEN_TABLE`]) unless `read_only`; a read-only transaction on a database without
    /// the table reads no rows. (MySQL commits a `CREATE TABLE` at once, so it comes before
    /// the transaction.)
    pub fn begin(
        url: &DatabaseUrl,
        read_only: bool,
    ) -> Result<(Self, Vec<DiracToken>), SourceError> {
        let mut conn = connect(url)?;
        let url = url.masked();
        let query_error = |source| SourceError::Query {
            url: url.clone(),
            source,
        };
        if !read_only {
            conn.batch_execute(CREATE_TOKEN_TABLE)
                .map_err(|source| SourceError::Write {
                    url: url.clone(),
                    source,
                })?;
        } else if !table_exists(&mut conn).map_err(query_error)? {
            return Ok((
                Self {
                    conn,
                    url,
                    open: false,
                },
                Vec::new(),
            ));
        }
        conn.batch_execute("START TRANSACTION")
            .map_err(query_error)?;
        let lock = if read_only { "" } else { " FOR UPDATE" };
        let rows: Vec<RawRow> = diesel::sql_query(format!("{SELECT_TOKENS}{lock}"))
            .load(&mut conn)
            .map_err(query_error)?;
        let rows = rows.into_iter().map(DiracToken::from).collect();
        Ok((
            Self {
                conn,
                url,
                open: true,
            },
            rows,
        ))
    }

    /// Deletes each replacement's rows and inserts its row, inside the transaction.
    pub fn apply(&mut self, replacements: &[Replacement]) -> Result<(), SourceError> {
        let url = &self.url;
        let write_error = |source| SourceError::Write {
            url: url.clone(),
            source,
        };
        for replacement in replacements {
            for id in &replacement.delete {
                diesel::sql_query("DELETE FROM `Token` WHERE id = ?")
                    .bind::<BigInt, _>(*id)
                    .execute(&mut self.conn)
                    .map_err(write_error)?;
            }
            let row = &replacement.insert;
            // access_token is NOT NULL in DIRAC's DDL; we hand DIRAC no access token ('').
            // The revocation times and expires_in are DIRAC's unused zeros.
            diesel::sql_query(
                "INSERT INTO `Token` (kid, user_id, provider, expires_at, access_token, \
                 refresh_token, rt_expires_at, client_id, token_type, scope, issued_at, \
                 access_token_revoked_at, refresh_token_revoked_at, expires_in) \
                 VALUES (NULL, ?, ?, ?, '', ?, ?, ?, ?, ?, ?, 0, 0, 0)",
            )
            .bind::<Text, _>(&row.user_id)
            .bind::<Text, _>(&row.provider)
            .bind::<BigInt, _>(row.expires_at)
            .bind::<Text, _>(row.refresh_token.expose())
            .bind::<BigInt, _>(row.rt_expires_at)
            .bind::<Nullable<Text>, _>(row.client_id.as_deref())
            .bind::<Nullable<Text>, _>(row.token_type.as_deref())
            .bind::<Text, _>(&row.scope)
            .bind::<BigInt, _>(row.issued_at)
            .execute(&mut self.conn)
            .map_err(write_error)?;
        }
        Ok(())
    }

    /// Commits what [`Self::apply`] wrote.
    pub fn commit(mut self) -> Result<(), SourceError> {
        if !self.open {
            return Ok(());
        }
        self.conn
            .batch_execute("COMMIT")
            .map_err(|source| SourceError::Write {
                url: self.url.clone(),
                source,
            })
    }
}

/// Whether the database has DIRAC's `Token` table.
fn table_exists(conn: &mut MysqlConnection) -> Result<bool, diesel::result::Error> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let found: Count = diesel::sql_query(
        "SELECT COUNT(*) AS count FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'Token'",
    )
    .get_result(conn)?;
    Ok(found.count > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mysql_urls_are_sources_and_refusals_show_no_password() {
        for url in [
            "postgres://u:pw-secret@h/db",
            "sqlite:///tmp/pw-secret",
            "oracle://u:pw-secret@h/db",
            "u:pw-secret@h/db",
        ] {
            let err = source_url(url, None).unwrap_err().to_string();
            assert!(err.contains("mysql://"), "{err}");
            assert!(!err.contains("pw-secret"), "{err}");
        }
        let err = source_url("postgres://u:pw@h/db", None).unwrap_err();
        assert!(err.to_string().contains("not a postgres:// URL"), "{err}");
        assert!(source_url("mariadb://u:pw@h/db", None).is_ok());
        assert!(source_url("mysql://u:pw@h:3306/db", None).is_ok());
    }

    #[test]
    fn a_password_file_sets_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "p@ss\n").unwrap();
        let url = source_url("mysql://dirac@h:3306/TokenDB", Some(&file)).unwrap();
        assert_eq!(url.expose(), "mysql://dirac:p%40ss@h:3306/TokenDB");
        assert_eq!(url.masked(), "mysql://dirac:***@h:3306/TokenDB");
        let err = source_url("mysql://h/db", Some(&file)).unwrap_err();
        assert!(matches!(
            err,
            SourceError::Url(UrlError::PasswordWithoutUser)
        ));
        let missing = dir.path().join("missing");
        let err = source_url("mysql://u@h/db", Some(&missing)).unwrap_err();
        assert!(err.to_string().contains("cannot read the password file"));
    }
}
