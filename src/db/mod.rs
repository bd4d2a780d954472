//! Storage: diesel over SQLite, PostgreSQL and MariaDB/MySQL (each a Cargo feature; the code of
//! a backend not built in is left out). Only the DB actor (`crate::actors::db`) holds the pool;
//! everything here is called from its threads.

pub mod audit;
mod changes;
mod client_tokens;
mod connection;
#[cfg(feature = "mysql")]
pub mod dirac_tokendb;
mod inspect;
mod liveness;
mod migrate;
mod schema;
mod sqlite_lock;
mod store;

pub use changes::{
    Change, ChangeBatch, ChangeKind, ChangeReader, LOG_RETENTION, READER_APPLICATION_NAME,
};
pub use client_tokens::{ClientTokenKey, StoredClientToken};
pub use connection::{DbConn, DbManager, DbPool, PoolOptions, build_pool, establish};
pub use inspect::{
    CredentialFilter, CredentialRecord, NotOpened, OpenedTokens, RecordAndTokens, SealFailure,
    VerifyBatch,
};
pub use liveness::{
    LIVENESS_MARK, LeasedRow, database_now, dead_lease_holder, other_sessions, take_liveness_lock,
};
pub use migrate::run_migrations;
pub use sqlite_lock::{LockError, SqliteServeLock};
pub use store::{
    CredentialCount, CredentialPair, CredentialVersion, ExportCandidate, ExportSkip, ImportOutcome,
    ReencryptBatch, StoredToken, TokenStore, TokenUpdate,
};

use thiserror::Error;

use crate::crypto::CryptoError;
use crate::domain::TokenDictError;

#[derive(Debug, Error)]
pub enum DbError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: diesel::ConnectionError,
    },
    #[error("no database connection available: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Url(#[from] crate::config::UrlError),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Refused(#[from] TokenDictError),
    #[error(
        "the stored credential changed since it was read (generation {expected} is no longer current)"
    )]
    Conflict { expected: i64 },
    #[error("a row holds an unknown credential state '{0}'")]
    BadState(String),
    #[error("the database actor is not running")]
    Unavailable,
    #[error("another session holds this process's liveness lock")]
    LockTaken,
    #[error("the database did not answer {operation} within its deadline")]
    Timeout { operation: &'static str },
}

impl DbError {
    /// The database did not answer within the caller's deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}
