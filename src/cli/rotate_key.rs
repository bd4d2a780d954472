use std::sync::Arc;

use super::CliError;
use crate::actors::db::DbOperation;
use crate::app::open_database;
use crate::config::Settings;
use crate::crypto::{KeyringFile, SharedKeyring};
use crate::db::PoolOptions;
use crate::metrics::Metrics;

/// Passes in a row that rewrite nothing before rotate-key gives up: each such pass means every
/// row it read was changed by a token write in between, which a live server does only briefly.
const MAX_IDLE_PASSES: u32 = 50;

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
    let (mut rewritten, mut conflicts, mut idle_passes) = (0, 0, 0);
    let rows_under_old_keys = || {
        database.run(DbOperation::RowsUnderOldKeys, |store, conn| {
            store.rows_under_old_keys(conn)
        })
    };
    while rows_under_old_keys().await? > 0 {
        let pass = database
            .run(DbOperation::ReencryptPass, move |store, conn| {
                store.reencrypt_pass(conn, batch)
            })
            .await?;
        rewritten += pass.rewritten;
        conflicts += pass.conflicts;
        idle_passes = if pass.rewritten == 0 {
            idle_passes + 1
        } else {
            0
        };
        if idle_passes >= MAX_IDLE_PASSES {
            return Err(CliError::Rotation(format!(
                "re-encrypted {rewritten} rows, but the rest kept changing under concurrent writes; \
                 run rotate-key again (key {new_key} stays in the keyring)"
            )));
        }
        if pass.rewritten == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    println!(
        "re-encrypted {rewritten} stored credentials under {new_key} \
         ({conflicts} rows changed by concurrent writes were re-read and done again)"
    );
    Ok(())
}
