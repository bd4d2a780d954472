//! DIRAC's own TokenDB (docs/DIRAC.md#the-token-table): a MySQL `Token` table of plaintext tokens,
//! with no key on (user_id, provider). `import-dirac-tokendb` reads it once, here; nothing writes
//! to it. The connection is the command's own (it is not the service's database).

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

/// Every row of DIRAC's `Token` table, in id order.
pub fn read_tokens(url: &DatabaseUrl) -> Result<Vec<DiracToken>, SourceError> {
    let mut conn = MysqlConnection::establish(&mysql_scheme(url.expose())).map_err(|source| {
        SourceError::Connect {
            url: url.masked(),
            source,
        }
    })?;
    let query_error = |source| SourceError::Query {
        url: url.masked(),
        source,
    };
    conn.batch_execute("SET NAMES utf8mb4")
        .map_err(query_error)?;
    let rows: Vec<RawRow> = diesel::sql_query(SELECT_TOKENS)
        .load(&mut conn)
        .map_err(query_error)?;
    Ok(rows.into_iter().map(DiracToken::from).collect())
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
