//! `tokens`: the operator's view of the stored credentials (`list`, `show`, `revoke`, `verify`),
//! read from the configured database directly, so that it works while the service is down, and
//! opened with the keyring of the configuration. No token value is printed, except by
//! `show --show-values`.
//!
//! Exit codes (docs/OPERATIONS.md#exit-codes-of-the-tokens-commands): 0 done, 1 any other error
//! (configuration, keyring, database), 2 a wrong command line, and those of [`TokensError`].

mod list;
mod revoke;
mod show;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;
use thiserror::Error;

use crate::actors::db::{Database, DbOperation};
use crate::app::{AppError, open_database};
use crate::config::Settings;
use crate::crypto::{CryptoError, SharedKeyring};
use crate::db::{CredentialFilter, CredentialRecord, DbError, PoolOptions};
use crate::domain::utc_timestamp;
use crate::metrics::Metrics;

/// Exit code: no stored credential of that user at that provider.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: `revoke` did not revoke at the IdP, and deleted nothing.
pub const EXIT_NOT_REVOKED: u8 = 4;
/// Exit code: `verify` found stored values that do not decrypt.
pub const EXIT_UNDECRYPTABLE: u8 = 5;

/// Rows per database read of `list` and `verify`.
const BATCH: i64 = 1000;
/// How long one database operation of a command may take: a batch, a deletion that waits for a
/// server's write lock (SQLite). A hung database fails the command instead of hanging it.
const OPERATION_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// List the stored credentials, one line each (never a token value).
    ///
    /// Each line: user ID, provider, state, generation, key id, refresh-token expiry, last
    /// update, refresh-lease holder. A row whose key is not in the keyring is listed with state
    /// `undecryptable` (nothing is decrypted: `tokens verify` opens every value).
    List(list::ListArgs),
    /// Every column of one credential; its token values only with --show-values.
    Show(show::ShowArgs),
    /// Revoke a credential's refresh token at its IdP, then delete the credential.
    ///
    /// The revocation is RFC 7009's; running servers drop the credential from their caches within
    /// MaxStaleness. If the IdP refuses or cannot be reached, nothing is deleted (exit code 4), unless
    /// --force: deleting without revoking leaves the grant alive at the IdP.
    Revoke(revoke::RevokeArgs),
    /// Check that every stored value decrypts: after a restore, before removing a key.
    ///
    /// Decrypts every stored value (credentials and client tokens) with the keyring; prints the
    /// rows per key id and each value that does not decrypt (exit code 5).
    Verify(verify::VerifyArgs),
}

#[derive(Debug, Error)]
pub enum TokensError {
    #[error(
        "{0}; the tokens commands need the keyring the service uses (EncryptionKeyFile of the \
         configuration)"
    )]
    Keyring(#[source] CryptoError),
    #[error("the SQLite database {0} does not exist")]
    NoDatabase(String),
    #[error(transparent)]
    Database(#[from] AppError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// Exit code [`EXIT_NOT_FOUND`].
    #[error("{0}")]
    NotFound(String),
    /// Exit code [`EXIT_NOT_REVOKED`].
    #[error("{0}")]
    NotRevoked(String),
    /// Exit code [`EXIT_UNDECRYPTABLE`].
    #[error(
        "{failed} of {rows} stored rows do not decrypt with the keyring {keyring} (listed above)"
    )]
    Undecryptable {
        failed: usize,
        rows: usize,
        keyring: String,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl TokensError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotFound(_) => EXIT_NOT_FOUND,
            Self::NotRevoked(_) => EXIT_NOT_REVOKED,
            Self::Undecryptable { .. } => EXIT_UNDECRYPTABLE,
            _ => 1,
        }
    }
}

pub async fn run(settings: Settings, command: TokensCommand) -> Result<(), TokensError> {
    let store = Store::open(&settings).await?;
    match command {
        TokensCommand::List(args) => list::run(&store, &args).await,
        TokensCommand::Show(args) => show::run(&store, &settings, &args).await,
        TokensCommand::Revoke(args) => revoke::run(&store, &settings, &args).await,
        TokensCommand::Verify(args) => verify::run(&store, &args).await,
    }
}

/// The configured database and keyring.
struct Store {
    database: Database,
    keyring: Arc<SharedKeyring>,
    keyring_path: PathBuf,
}

impl Store {
    async fn open(settings: &Settings) -> Result<Self, TokensError> {
        // Never generated here (not even for a demo configuration): a command that made a new
        // keyring would find every stored row undecryptable.
        let keyring_path = settings.service.encryption_key_file.clone();
        let keyring = Arc::new(SharedKeyring::load(&keyring_path).map_err(TokensError::Keyring)?);
        // SQLite would create a missing file: a mistyped path would list an empty store.
        if let Some(path) = settings.database.sqlite_path()
            && !path.starts_with("file:")
            && !std::path::Path::new(path).exists()
        {
            return Err(TokensError::NoDatabase(path.to_owned()));
        }
        let options = PoolOptions {
            max_size: 1,
            deadline: OPERATION_DEADLINE,
            ..Default::default()
        };
        // Nothing scrapes a command's metrics.
        let metrics = Arc::new(Metrics::unexported());
        let database = open_database(&settings.database, keyring.clone(), options, metrics).await?;
        Ok(Self {
            database,
            keyring,
            keyring_path,
        })
    }

    /// Every credential matching `filter`, by ascending id, read in batches.
    async fn credentials(
        &self,
        filter: &CredentialFilter,
    ) -> Result<Vec<CredentialRecord>, TokensError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let filter = filter.clone();
            let batch = self
                .database
                .run(DbOperation::ListCredentials, move |store, conn| {
                    store.list_credentials(conn, &filter, after, BATCH)
                })
                .await?;
            let Some(last) = batch.last() else {
                return Ok(all);
            };
            after = last.id;
            all.extend(batch);
        }
    }

    /// Why there is no credential of `user_id` at `provider`: what the user has instead, and
    /// whether the provider is configured at all.
    async fn not_found(
        &self,
        settings: &Settings,
        user_id: &str,
        provider: &str,
    ) -> Result<TokensError, TokensError> {
        let filter = CredentialFilter {
            user_id: Some(user_id.to_owned()),
            ..Default::default()
        };
        let mut held: Vec<String> = self
            .credentials(&filter)
            .await?
            .into_iter()
            .map(|record| record.provider)
            .collect();
        held.sort();
        let mut message = format!("no stored credential of user '{user_id}' at '{provider}'");
        if held.is_empty() {
            message.push_str(&format!(
                "; user '{user_id}' has no stored credential at all"
            ));
        } else {
            message.push_str(&format!(
                "; user '{user_id}' has credentials at: {}",
                held.join(", ")
            ));
        }
        if !settings.idps.iter().any(|idp| idp.name() == provider) {
            message.push_str(&format!(
                "; no identity provider '{provider}' is configured (/Resources/IdProviders)"
            ));
        }
        Ok(TokensError::NotFound(message))
    }
}

/// How a stored credential is listed: its stored state, or `undecryptable` when the keyring
/// lacks the key that sealed it.
fn listed_state<'a>(record: &'a CredentialRecord, keyring: &SharedKeyring) -> &'a str {
    if keyring.current().has_key(&record.key_id) {
        &record.state
    } else {
        UNDECRYPTABLE
    }
}

const UNDECRYPTABLE: &str = "undecryptable";

/// A Unix time for people: UTC, or `-` for none (0).
fn when(seconds: i64) -> String {
    match u64::try_from(seconds) {
        Ok(seconds) if seconds > 0 => {
            utc_timestamp(UNIX_EPOCH + Duration::from_secs(seconds)) + " UTC"
        }
        _ => "-".into(),
    }
}

/// A span of time: a whole number with a unit, `s`, `m`, `h` or `d` (a bare number is seconds):
/// `90s`, `30m`, `12h`, `7d`. In seconds.
fn parse_span(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a span of time (examples: 7d, 12h, 30m, 90s)"))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use s, m, h or d)"
            ));
        }
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("'{text}' is too long a span"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_take_seconds_minutes_hours_and_days() {
        assert_eq!(parse_span("7d"), Ok(7 * 86_400));
        assert_eq!(parse_span("12h"), Ok(12 * 3600));
        assert_eq!(parse_span("30m"), Ok(1800));
        assert_eq!(parse_span("90s"), Ok(90));
        assert_eq!(parse_span("45"), Ok(45));
        for bad in ["", "d", "7w", "1.5d", "-1d", "7 d", "99999999999999999999d"] {
            assert!(parse_span(bad).is_err(), "{bad}");
        }
        assert!(parse_span("7w").unwrap_err().contains("use s, m, h or d"));
    }

    #[test]
    fn times_are_utc_or_a_dash() {
        assert_eq!(when(0), "-");
        assert_eq!(when(-5), "-");
        assert_eq!(when(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
