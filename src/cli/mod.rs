//! The `tokenmanager` command line: `serve`, `migrate`, `rotate-key`, `audit`, `tokens`,
//! `import-dirac-tokendb`, `export-dirac-tokendb`.

mod audit;
#[cfg(feature = "mysql")]
mod export_tokendb;
#[cfg(feature = "mysql")]
mod import_tokendb;
mod migrate;
mod rotate_key;
mod serve;
mod tokens;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use thiserror::Error;

use crate::app::{AppError, ConfigSources};
use crate::config::{self, ConfigError, LogFormat, Settings};
use crate::crypto::CryptoError;
use crate::db::DbError;

#[derive(Debug, Parser)]
#[command(
    name = "tokenmanager",
    version,
    about = "DIRAC's TokenManager service, in Rust"
)]
pub struct Cli {
    /// A DIRAC CFG file; repeat to merge several, later files winning (as DIRAC merges them).
    #[arg(long = "config", value_name = "FILE", global = true)]
    config: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (migrations are applied first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Add a new encryption key to the keyring and re-encrypt every stored token under it.
    /// Safe while servers run: they learn the new key when they meet it.
    RotateKey {
        /// Id of the new key (default: the next free k<n>).
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
        /// Rows re-encrypted per transaction (one UPDATE statement on PostgreSQL and MariaDB).
        /// A batch holds its rows' locks (on SQLite, the file's write lock) until it commits:
        /// a token write waits for at most one batch.
        // 1,000: at 100,000 rows, 14,000-18,000 rows/s on PostgreSQL and MariaDB and 35,000 on
        // SQLite, a batch's transaction 35-150 ms, far below DatabaseDeadline (bench/README.md).
        #[arg(long, value_name = "ROWS", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch: i64,
    },
    /// Show the audit trail: token handouts (aggregated per AuditWindow) and credential
    /// changes, newest first, from the configured database (the service need not run).
    Audit {
        /// A DIRAC user name (the records of its IdP user IDs, from the Registry, and of tokens
        /// handed out on its behalf) or an IdP user ID.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Only the records of this IdP (a /Resources/IdProviders section name).
        #[arg(long, value_name = "PROVIDER")]
        provider: Option<String>,
        /// Only records whose last time is within this age: a number with s, m, h or d
        /// (`90m`, `7d`); a bare number is seconds.
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        since: Option<Duration>,
        /// At most this many records.
        #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        limit: i64,
        /// One JSON array of records (the fields getTokenAudit returns) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy the tokens of a running DIRAC (its MySQL TokenDB) into our encrypted store.
    ///
    /// Reads every row of DIRAC's `Token` table (plaintext tokens) and stores one credential per
    /// (user_id, provider), encrypted, in the database of the configuration. Several DIRAC rows
    /// for one pair: the newest wins (highest issued_at, then highest id); the others are
    /// skipped as duplicates. Rows whose refresh token has expired (rt_expires_at <= now, 0
    /// included) are skipped; rows without user_id, provider or refresh token are refused.
    ///
    /// Safe to run again, also while servers run: a credential we hold is never overwritten,
    /// except an earlier import that nobody has used or replaced since, which DIRAC's newer
    /// token replaces. Prints the counts imported, updated, unchanged, kept_ours,
    /// skipped_expired, skipped_duplicate and refused (with each refused row's id and reason);
    /// never a token. Applies pending migrations first, except with --dry-run.
    #[cfg_attr(
        not(feature = "mysql"),
        command(
            about = "Not in this build: reading DIRAC's MySQL TokenDB needs the Cargo feature `mysql`",
            long_about = None
        )
    )]
    ImportDiracTokendb {
        /// DIRAC's TokenDB: mysql://user:password@host:port/dbname (or mariadb://).
        #[arg(value_name = "MYSQL_URL")]
        source: String,
        /// Read the source database password from FILE (one trailing newline ignored), rather
        /// than from the URL, where other users of the machine can see it.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Compare only: print what an import would do and write nothing (no migration either).
        #[arg(long)]
        dry_run: bool,
    },
    /// List, show, revoke and verify the stored credentials (works while the service is down).
    ///
    /// Reads the database of the configuration directly, with its keyring. Never prints a token
    /// value unless `show --show-values` asks. Exit codes: 0 done, 1 error, 2 wrong usage, 3 no
    /// such credential, 4 not revoked (nothing deleted), 5 stored values that do not decrypt.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Write our current refresh tokens back into DIRAC's TokenDB, in clear text, so that
    /// DIRAC's own TokenManager can take over again without a new login.
    ///
    /// Stop every `serve` on our database first: a token one rotates after the export would be
    /// lost to DIRAC. The command refuses while one may run (the SQLite serve lock; any other
    /// session on a PostgreSQL or MariaDB database) unless --force, and writes nothing if any of
    /// our credentials changed meanwhile. Creates DIRAC's `Token` table if absent (DIRAC
    /// 9.1.22's DDL). A credential of ours replaces every DIRAC row of its (user_id, provider),
    /// unless DIRAC holds a live row with another refresh token issued at or after our last
    /// write of it. Credentials that need re-delegation, whose refresh token has expired or that
    /// do not decrypt are not exported. One transaction; a second run changes nothing. Prints
    /// the counts exported, replaced, unchanged, kept_dirac, skipped_needs_redelegation,
    /// skipped_expired and failed; never a token.
    #[cfg_attr(
        not(feature = "mysql"),
        command(
            about = "Not in this build: writing DIRAC's MySQL TokenDB needs the Cargo feature `mysql`",
            long_about = None
        )
    )]
    ExportDiracTokendb {
        /// DIRAC's TokenDB: mysql://user:password@host:port/dbname (or mariadb://).
        #[arg(value_name = "MYSQL_URL")]
        target: String,
        /// Read the target database password from FILE (one trailing newline ignored), rather
        /// than from the URL, where other users of the machine can see it.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Print what an export would do and write nothing (needs no confirmation).
        #[arg(long)]
        dry_run: bool,
        /// Confirm that DIRAC keeps tokens in clear text: every exported refresh token is readable
        /// by anyone who can read DIRAC's database or its backups. Without it nothing is written.
        #[arg(long = "i-understand-tokens-are-stored-in-clear")]
        cleartext_confirmed: bool,
        /// Export even though other sessions are connected to our database (or the SQLite serve
        /// lock is held). Changes to our credentials during the export still abort it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Error)]
pub enum CliError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error("{0}")]
    Rotation(String),
    #[error("{0}")]
    Audit(String),
    #[error(transparent)]
    Tokens(#[from] tokens::TokensError),
    #[cfg(feature = "mysql")]
    #[error("{0}")]
    Export(String),
    #[cfg(feature = "mysql")]
    #[error(transparent)]
    Source(#[from] crate::db::dirac_tokendb::SourceError),
    #[cfg(not(feature = "mysql"))]
    #[error(
        "import-dirac-tokendb is not in this build: reading DIRAC's MySQL TokenDB needs the \
         Cargo feature `mysql`"
    )]
    NoImport,
    #[cfg(not(feature = "mysql"))]
    #[error(
        "export-dirac-tokendb is not in this build: writing DIRAC's MySQL TokenDB needs the \
         Cargo feature `mysql`"
    )]
    NoExport,
}

impl CliError {
    /// The process's exit status for this error: 1, or a code of its own (`tokens`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Tokens(error) => error.exit_code(),
            _ => 1,
        }
    }
}

impl Cli {
    /// The configuration's `LogFormat`, read before the log starts: from the local files, and
    /// `text` when they do not load (the command then says why).
    pub fn log_format(&self) -> LogFormat {
        config::load(&self.config)
            .map_or(LogFormat::Text, |loaded| loaded.settings.service.log_format)
    }

    pub fn run(self) -> Result<(), CliError> {
        let Self { config, command } = self;
        let settings = || load_settings(&config);
        actix::System::new().block_on(async {
            match command {
                Command::Serve => {
                    let (settings, sources) = ConfigSources::load(&config).await?;
                    serve::run(settings, sources).await
                }
                Command::Migrate => migrate::run(settings()?).await,
                Command::RotateKey { key_id, batch } => {
                    rotate_key::run(settings()?, key_id.as_deref(), batch).await
                }
                Command::Audit {
                    user,
                    provider,
                    since,
                    limit,
                    json,
                } => {
                    let args = audit::AuditArgs {
                        user,
                        provider,
                        since,
                        limit,
                        json,
                    };
                    audit::run(settings()?, args).await
                }
                #[cfg(feature = "mysql")]
                Command::ImportDiracTokendb {
                    source,
                    password_file,
                    dry_run,
                } => {
                    import_tokendb::run(settings()?, &source, password_file.as_deref(), dry_run)
                        .await
                }
                #[cfg(not(feature = "mysql"))]
                Command::ImportDiracTokendb { .. } => Err(CliError::NoImport),
                Command::Tokens(command) => Ok(tokens::run(settings()?, command).await?),
                #[cfg(feature = "mysql")]
                Command::ExportDiracTokendb {
                    target,
                    password_file,
                    dry_run,
                    cleartext_confirmed,
                    force,
                } => {
                    export_tokendb::run(
                        settings()?,
                        &target,
                        password_file.as_deref(),
                        dry_run,
                        cleartext_confirmed,
                        force,
                    )
                    .await
                }
                #[cfg(not(feature = "mysql"))]
                Command::ExportDiracTokendb { .. } => Err(CliError::NoExport),
            }
        })
    }
}

/// An age on the command line: a whole number with `s`, `m`, `h` or `d`, or bare seconds.
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3600),
        Some((at, 'd')) => (&text[..at], 86_400),
        _ => (text, 1),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not an age such as 90s, 30m, 12h or 7d"))?;
    number
        .checked_mul(unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long an age"))
}

fn load_settings(paths: &[PathBuf]) -> Result<Settings, CliError> {
    let loaded = config::load(paths)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_with_their_units() {
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "h", "1w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
