//! `rotate-key`: adds a key, then re-seals every stored credential under it.
//!
//! The table is walked in sweeps, each in batches by ascending id (keyset pagination: a batch
//! costs the same at row 1 and at row 1,000,000, and nothing is counted per batch). Each batch is
//! one transaction of compare-and-set writes (see [`crate::db::TokenStore::reencrypt_batch`]):
//! a row a server rewrote in between is left as the server wrote it. A sweep leaves behind those
//! rows and any row a server wrote under an older key while it ran (a server seals with the new
//! key once it has read a row sealed under it, or after SIGHUP); the next sweep, from the start,
//! takes them. The rows left are counted once per sweep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CliError, audit};
use crate::actors::db::{Database, DbOperation};
use crate::app::open_database;
use crate::config::Settings;
use crate::crypto::{KeyringFile, SharedKeyring};
use crate::db::PoolOptions;
use crate::domain::audit::{AuditKind, AuditRecord};
use crate::metrics::Metrics;

/// Batches in a row that rewrite nothing before rotate-key gives up: each such batch means every
/// row it read was changed by a token write in between, which a live server does only briefly.
const MAX_IDLE_PASSES: u32 = 50;
/// Sweeps before rotate-key gives up: more means servers keep writing under an older key, which
/// they stop doing once they have read one row sealed under the new key (or after SIGHUP).
const MAX_SWEEPS: u32 = 20;
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What the sweeps did so far.
#[derive(Default)]
struct Progress {
    rewritten: usize,
    conflicts: usize,
    batches: usize,
    longest_transaction: Duration,
}

pub async fn run(settings: Settings, key_id: Option<&str>, batch: i64) -> Result<(), CliError> {
    let path = &settings.service.encryption_key_file;
    let new_key = KeyringFile::new(path).add_key(key_id)?;
    println!(
        "{}: added key {new_key}; it now encrypts new tokens",
        path.display()
    );

    let keyring = Arc::new(SharedKeyring::load(path)?);
    let options = PoolOptions {
        max_size: 1,
        ..Default::default()
    };
    // Nothing scrapes a command's metrics.
    let metrics = Arc::new(Metrics::unexported());
    let database = open_database(&settings.database, keyring, options, metrics).await?;
    let started = Instant::now();
    let mut left = rows_under_old_keys(&database).await?;
    println!("{left} stored credentials to re-encrypt, up to {batch} per transaction");
    let mut progress = Progress::default();
    let mut sweeps = 0;
    while left > 0 {
        if sweeps == MAX_SWEEPS {
            return Err(CliError::Rotation(format!(
                "re-encrypted {} rows in {sweeps} sweeps, but {left} rows were written under older \
                 keys again meanwhile; send SIGHUP to the servers (they then encrypt with {new_key}) \
                 and run rotate-key again",
                progress.rewritten
            )));
        }
        sweeps += 1;
        sweep(&database, batch, &mut progress, started)
            .await
            .map_err(|error| match error {
                SweepError::KeptChanging => CliError::Rotation(format!(
                    "re-encrypted {} rows, but the rest kept changing under concurrent writes; \
                     run rotate-key again (key {new_key} stays in the keyring)",
                    progress.rewritten
                )),
                SweepError::Db(error) => error.into(),
            })?;
        left = rows_under_old_keys(&database).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "re-encrypted {} stored credentials under {new_key} in {seconds:.1} s ({:.0} rows/s; \
         {sweeps} sweeps, {} batches, longest transaction {} ms; {} rows changed by concurrent \
         writes were re-read and done again)",
        progress.rewritten,
        progress.rewritten as f64 / seconds.max(1e-3),
        progress.batches,
        progress.longest_transaction.as_millis(),
        progress.conflicts,
    );
    let record = AuditRecord {
        kind: AuditKind::KeyRotation,
        outcome: "ok".into(),
        detail: Some(format!(
            "key {new_key}: {} stored credentials re-encrypted",
            progress.rewritten
        )),
        ..AuditRecord::default()
    };
    if let Err(error) = audit::append(&database, vec![record]).await {
        eprintln!("warning: the rotation is done, but its audit record was not written: {error}");
    }
    Ok(())
}

async fn rows_under_old_keys(database: &Database) -> Result<i64, CliError> {
    Ok(database
        .run(DbOperation::RowsUnderOldKeys, |store, conn| {
            store.rows_under_old_keys(conn)
        })
        .await?)
}

enum SweepError {
    KeptChanging,
    Db(crate::db::DbError),
}

/// One walk over the table from its first id to its last.
async fn sweep(
    database: &Database,
    batch: i64,
    progress: &mut Progress,
    started: Instant,
) -> Result<(), SweepError> {
    let mut after = 0;
    let mut idle_passes = 0;
    let mut printed = Instant::now();
    loop {
        let done = database
            .run(DbOperation::ReencryptPass, move |store, conn| {
                store.reencrypt_batch(conn, after, batch)
            })
            .await
            .map_err(SweepError::Db)?;
        let Some(last_id) = done.last_id else {
            return Ok(());
        };
        after = last_id;
        progress.rewritten += done.rewritten;
        progress.conflicts += done.conflicts;
        progress.batches += 1;
        progress.longest_transaction = progress.longest_transaction.max(done.transaction);
        if done.rewritten == 0 {
            idle_passes += 1;
            if idle_passes >= MAX_IDLE_PASSES {
                return Err(SweepError::KeptChanging);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            idle_passes = 0;
        }
        if printed.elapsed() >= PROGRESS_EVERY {
            printed = Instant::now();
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "re-encrypted {} rows in {seconds:.0} s ({:.0} rows/s)",
                progress.rewritten,
                progress.rewritten as f64 / seconds
            );
        }
    }
}
