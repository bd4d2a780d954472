//! The database URL: its scheme picks the backend; it may hold a password, so it is shown only
//! masked.

use std::fmt;
use std::path::{Path, PathBuf};

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

    /// Whether this build can connect to the backend: each is a Cargo feature of the same name.
    pub fn built_in(self) -> bool {
        match self {
            Self::Sqlite => cfg!(feature = "sqlite"),
            Self::Postgres => cfg!(feature = "postgres"),
            Self::Mysql => cfg!(feature = "mysql"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "unsupported database URL: expected sqlite://, postgres://, postgresql://, mysql:// or \
         mariadb://"
    )]
    UnsupportedScheme,
    #[error(
        "this tokenmanager was built without the {} backend: rebuild it with the Cargo feature \
         `{}` (one of the default features)", .0.name(), .0.name()
    )]
    NotBuiltIn(Backend),
    #[error(
        "sqlite:// needs a file path (an in-memory database would differ per pooled connection)"
    )]
    NoSqliteFile,
    #[error("a password cannot be set for a SQLite database")]
    PasswordForSqlite,
    #[error("a password cannot be set in a database URL without a user name")]
    PasswordWithoutUser,
}

const SQLITE: &str = "sqlite://";

/// The database URL. It may contain a password, so `Debug` prints `[redacted]`; log
/// [`DatabaseUrl::masked`] instead.
///
/// `sqlite://<path>`: the rest of the URL is the file path (`sqlite:///abs/file`,
/// `sqlite://relative/file`). `postgres://`, `postgresql://`, `mysql://` and `mariadb://` URLs are
/// passed on verbatim.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrl([redacted])")
    }
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, UrlError> {
        let backend = backend_of(url).ok_or(UrlError::UnsupportedScheme)?;
        if !backend.built_in() {
            return Err(UrlError::NotBuiltIn(backend));
        }
        if url
            .strip_prefix(SQLITE)
            .is_some_and(|path| path.is_empty() || path.starts_with(':'))
        {
            return Err(UrlError::NoSqliteFile);
        }
        Ok(DatabaseUrl(url.to_owned()))
    }

    /// DIRAC's `getDBParameters` engine URL, `mysql://user:password@host:port/dbname`, with
    /// user, password and database name percent-encoded.
    pub fn mysql(user: &str, password: &str, host: &str, port: u16, db_name: &str) -> DatabaseUrl {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        DatabaseUrl(format!(
            "mysql://{}:{}@{host}:{port}/{}",
            percent_encode(user),
            percent_encode(password),
            percent_encode(db_name)
        ))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn backend(&self) -> Backend {
        backend_of(&self.0).expect("checked when built")
    }

    /// The file path of a SQLite URL.
    pub fn sqlite_path(&self) -> Option<&str> {
        self.0.strip_prefix(SQLITE)
    }

    /// Makes a relative SQLite path absolute with `resolve` (the configuration resolves it
    /// against the directory of the file that set it). Other URLs are unchanged.
    pub fn resolve_sqlite(self, resolve: impl FnOnce(&str) -> PathBuf) -> DatabaseUrl {
        match self.sqlite_path() {
            // A `file:` URI is not a path.
            Some(path) if !path.starts_with("file:") && Path::new(path).is_relative() => {
                DatabaseUrl(format!("{SQLITE}{}", resolve(path).display()))
            }
            _ => self,
        }
    }

    /// Sets (or replaces) the password of the user in the URL.
    pub fn with_password(&self, password: &str) -> Result<DatabaseUrl, UrlError> {
        if self.backend() == Backend::Sqlite {
            return Err(UrlError::PasswordForSqlite);
        }
        let (start, end) = authority(&self.0);
        let authority = &self.0[start..end];
        let Some(at) = authority.rfind('@') else {
            return Err(UrlError::PasswordWithoutUser);
        };
        let user = authority[..at].split(':').next().unwrap_or_default();
        if user.is_empty() {
            return Err(UrlError::PasswordWithoutUser);
        }
        Ok(DatabaseUrl(format!(
            "{}{user}:{}{}",
            &self.0[..start],
            percent_encode(password),
            &self.0[start + at..]
        )))
    }

    /// The URL with the password of the user and any `password=` query parameter replaced by
    /// `***`, for logs.
    pub fn masked(&self) -> String {
        if self.backend() == Backend::Sqlite {
            return self.0.clone();
        }
        let (start, end) = authority(&self.0);
        let mut out = self.0[..start].to_owned();
        let authority = &self.0[start..end];
        match authority.rfind('@') {
            Some(at) => match authority[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                    out.push_str(&authority[at..]);
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        let rest = &self.0[end..];
        match rest.split_once('?') {
            Some((path, query)) => {
                out.push_str(path);
                out.push('?');
                let params: Vec<String> = query
                    .split('&')
                    .map(|param| match param.split_once('=') {
                        Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                            format!("{key}=***")
                        }
                        _ => param.to_owned(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
            }
            None => out.push_str(rest),
        }
        out
    }
}

fn backend_of(url: &str) -> Option<Backend> {
    if url.starts_with(SQLITE) {
        Some(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(Backend::Postgres)
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Some(Backend::Mysql)
    } else {
        None
    }
}

/// Byte range of the authority (`user:password@host:port`) of a URL with a known scheme.
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    (start, end)
}

/// Percent-encodes everything but RFC 3986 unreserved characters. Python's `quote_plus`, used by
/// DIRAC, writes spaces as `+`, which URL parsers read back as a literal `+` in userinfo.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL of any known scheme, whether or not its backend is built in: what these tests look
    /// at comes after the scheme check.
    fn any(url: &str) -> DatabaseUrl {
        backend_of(url).expect("a known scheme");
        DatabaseUrl(url.to_owned())
    }

    #[test]
    fn schemes_are_checked() {
        for (url, backend) in [
            ("sqlite:///tmp/x", Backend::Sqlite),
            ("postgres://h/db", Backend::Postgres),
            ("postgresql://h/db", Backend::Postgres),
            ("mysql://h/db", Backend::Mysql),
            ("mariadb://h/db", Backend::Mysql),
        ] {
            let parsed = DatabaseUrl::parse(url).map(|url| url.backend());
            if backend.built_in() {
                assert_eq!(parsed, Ok(backend), "{url}");
            } else {
                assert_eq!(parsed, Err(UrlError::NotBuiltIn(backend)), "{url}");
            }
        }
        assert_eq!(
            DatabaseUrl::parse("/tmp/x.sqlite"),
            Err(UrlError::UnsupportedScheme)
        );
        assert_eq!(
            DatabaseUrl::parse("MYSQL://h/db"),
            Err(UrlError::UnsupportedScheme)
        );
        assert_eq!(DatabaseUrl::parse("sqlite://"), Err(UrlError::NoSqliteFile));
        assert_eq!(
            DatabaseUrl::parse("sqlite://:memory:"),
            Err(UrlError::NoSqliteFile)
        );
    }

    #[test]
    fn a_backend_not_built_in_is_refused_by_its_feature() {
        let message = UrlError::NotBuiltIn(Backend::Postgres).to_string();
        assert!(
            message.contains("without the postgres backend") && message.contains("`postgres`"),
            "{message}"
        );
    }

    #[test]
    fn mysql_url_encodes_userinfo_and_brackets_ipv6() {
        let url = DatabaseUrl::mysql("Dirac", "p@ss:w/rd %+é", "db.example.org", 3306, "TokenDB");
        assert_eq!(
            url.expose(),
            "mysql://Dirac:p%40ss%3Aw%2Frd%20%25%2B%C3%A9@db.example.org:3306/TokenDB"
        );
        assert_eq!(
            url.masked(),
            "mysql://Dirac:***@db.example.org:3306/TokenDB"
        );
        assert_eq!(
            DatabaseUrl::mysql("u", "p", "::1", 3307, "d").expose(),
            "mysql://u:p@[::1]:3307/d"
        );
    }

    #[test]
    fn masking_hides_passwords_only() {
        let masked = |u: &str| any(u).masked();
        assert_eq!(
            masked("postgres://u:p%40@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(masked("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(masked("mysql://h"), "mysql://h");
        assert_eq!(
            masked("postgresql://h/db?user=u&Password=x&sslmode=require"),
            "postgresql://h/db?user=u&Password=***&sslmode=require"
        );
        assert_eq!(masked("sqlite:///var/db.sqlite"), "sqlite:///var/db.sqlite");
    }

    #[test]
    fn password_is_injected_into_the_userinfo() {
        let url = any("postgres://tm@h:5432/db");
        assert_eq!(
            url.with_password("a b").unwrap().expose(),
            "postgres://tm:a%20b@h:5432/db"
        );
        let url = any("mysql://tm:old@h/db");
        assert_eq!(
            url.with_password("new").unwrap().expose(),
            "mysql://tm:new@h/db"
        );
        assert_eq!(
            any("mysql://h/db").with_password("x"),
            Err(UrlError::PasswordWithoutUser)
        );
        assert_eq!(
            any("sqlite:///x").with_password("x"),
            Err(UrlError::PasswordForSqlite)
        );
    }

    #[test]
    fn relative_sqlite_paths_resolve_against_the_directory() {
        let resolve = |u: &str| any(u).resolve_sqlite(|p| Path::new("/srv/tm/config").join(p));
        assert_eq!(
            resolve("sqlite://../var/tm.sqlite").sqlite_path(),
            Some("/srv/tm/config/../var/tm.sqlite")
        );
        assert_eq!(
            resolve("sqlite:///abs/tm.sqlite").expose(),
            "sqlite:///abs/tm.sqlite"
        );
        assert_eq!(
            resolve("sqlite://file:tm.db?mode=rwc").expose(),
            "sqlite://file:tm.db?mode=rwc"
        );
        assert_eq!(resolve("mysql://h/db").expose(), "mysql://h/db");
    }
}
