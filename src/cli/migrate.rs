use std::sync::Arc;

use super::CliError;
use crate::app::{open_database, open_keyring};
use crate::config::Settings;
use crate::db::PoolOptions;
use crate::metrics::Metrics;

pub async fn run(settings: Settings) -> Result<(), CliError> {
    let keyring = open_keyring(&settings)?;
    let url = &settings.database;
    let database = open_database(
        url,
        keyring,
        PoolOptions {
            max_size: 1,
            ..Default::default()
        },
        // Nothing scrapes a command's metrics.
        Arc::new(Metrics::unexported()),
    )
    .await?;
    let applied = database.migrate().await?;
    if applied.is_empty() {
        println!("{}: schema up to date", url.masked());
    } else {
        println!("{}: applied {}", url.masked(), applied.join(", "));
    }
    Ok(())
}
