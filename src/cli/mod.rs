//! The `tokenmanager` command line: `serve`, `migrate`, `rotate-key`.

mod migrate;
mod rotate_key;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use thiserror::Error;

use crate::actors::db::{Database, Ping};
use crate::config::{self, ConfigError, Settings};
use crate::crypto::{CryptoError, KeyringFile, SharedKeyring};
use crate::db::{DatabaseUrl, DbError, PoolOptions};

/// How long start-up waits for the database before giving up with its error.
const DATABASE_WAIT: Duration = Duration::from_secs(15);

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
        /// Rows re-encrypted per database round trip.
        #[arg(long, value_name = "ROWS", default_value_t = 200, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch: i64,
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
    Lock(#[from] crate::db::LockError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the database did not answer within {0:?}")]
    DatabaseTimeout(Duration),
    #[error("{0}")]
    Rotation(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Idp(#[from] crate::idp::IdpError),
}

impl Cli {
    pub fn run(self) -> Result<(), CliError> {
        let settings = load_settings(&self.config)?;
        actix::System::new().block_on(async move {
            match self.command {
                Command::Serve => serve::run(settings, self.config).await,
                Command::Migrate => migrate::run(settings).await,
                Command::RotateKey { key_id, batch } => {
                    rotate_key::run(settings, key_id.as_deref(), batch).await
                }
            }
        })
    }
}

fn load_settings(paths: &[PathBuf]) -> Result<Settings, CliError> {
    let loaded = config::load(paths)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.settings)
}

/// The keyring in force. A missing keyring stops start-up, except for a configuration that asks
/// for throwaway demo credentials (the shipped example), where a first key is generated.
fn open_keyring(settings: &Settings) -> Result<Arc<SharedKeyring>, CliError> {
    let path = &settings.service.encryption_key_file;
    if settings.service.generate_demo_credentials && !path.exists() {
        let key_id = KeyringFile::new(path).create()?;
        tracing::warn!(path = %path.display(), key_id, "generated a demo encryption keyring");
    }
    Ok(Arc::new(SharedKeyring::load(path)?))
}

/// Starts the DB actor and waits until the database answers.
async fn open_database(
    url: &DatabaseUrl,
    keyring: Arc<SharedKeyring>,
    options: PoolOptions,
) -> Result<Database, CliError> {
    let database = Database::open(url, keyring, options)?;
    tokio::time::timeout(DATABASE_WAIT, database.call(Ping {}))
        .await
        .map_err(|_| CliError::DatabaseTimeout(DATABASE_WAIT))??;
    Ok(database)
}
