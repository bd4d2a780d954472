//! `tokens verify`: opens every stored ciphertext, of credentials and of client tokens, with the
//! keyring of the configuration, in batches by ascending id. Prints each value that does not
//! open as it is found (where and why, never a value), then the rows per key id; progress goes
//! to stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;

use super::{Store, TokensError};
use crate::actors::db::DbOperation;
use crate::db::{DbConn, DbError, SealFailure, TokenStore, VerifyBatch};

/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Rows read (and decrypted) per database read.
    #[arg(long, value_name = "ROWS", default_value_t = super::BATCH, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    batch: i64,
}

/// A table's totals.
#[derive(Default)]
struct Totals {
    rows: usize,
    opened: BTreeMap<String, usize>,
    failed: BTreeMap<String, usize>,
    empty: usize,
}

impl Totals {
    fn add(&mut self, batch: &VerifyBatch) {
        self.rows += batch.rows;
        self.empty += batch.empty;
        for (key, n) in &batch.opened {
            *self.opened.entry(key.clone()).or_default() += n;
        }
        for (key, n) in &batch.failed {
            *self.failed.entry(key.clone()).or_default() += n;
        }
    }

    fn failed(&self) -> usize {
        self.failed.values().sum()
    }
}

type VerifyFn = fn(&TokenStore, &mut DbConn, i64, i64) -> Result<VerifyBatch, DbError>;

pub(super) async fn run(store: &Store, args: &VerifyArgs) -> Result<(), TokensError> {
    let started = Instant::now();
    let tables: [(&str, DbOperation, VerifyFn); 2] = [
        (
            "tokens",
            DbOperation::VerifyCredentials,
            TokenStore::verify_credentials,
        ),
        (
            "client_tokens",
            DbOperation::VerifyClientTokens,
            TokenStore::verify_client_tokens,
        ),
    ];
    let mut out = std::io::stdout().lock();
    let mut totals: Vec<(&str, Totals)> = Vec::new();
    let mut printed = Instant::now();
    for (table, operation, verify) in tables {
        let mut table_totals = Totals::default();
        let mut after = 0;
        let batch = args.batch;
        loop {
            let done = store
                .database
                .run(operation, move |store, conn| {
                    verify(store, conn, after, batch)
                })
                .await?;
            let Some(last_id) = done.last_id else {
                break;
            };
            after = last_id;
            table_totals.add(&done);
            for failure in &done.failures {
                writeln!(out, "{}", describe(failure))?;
            }
            if printed.elapsed() >= PROGRESS_EVERY {
                printed = Instant::now();
                out.flush()?;
                let seconds = started.elapsed().as_secs_f64();
                eprintln!(
                    "verify: {table}: {} rows read, {} do not decrypt ({:.0} rows/s)",
                    table_totals.rows,
                    table_totals.failed(),
                    table_totals.rows as f64 / seconds.max(1e-3)
                );
            }
        }
        totals.push((table, table_totals));
    }

    let keyring = store.keyring.current();
    let mut used_keys = BTreeSet::new();
    for (table, totals) in &totals {
        let mut line = format!("{table}: {} rows", totals.rows);
        let keys: BTreeSet<&String> = totals.opened.keys().chain(totals.failed.keys()).collect();
        for key in keys {
            used_keys.insert(key.clone());
            let opened = totals.opened.get(key).copied().unwrap_or(0);
            let failed = totals.failed.get(key).copied().unwrap_or(0);
            let known = if keyring.has_key(key) {
                ""
            } else {
                " (not in the keyring)"
            };
            line.push_str(&format!(
                "; key {key}{known}: {opened} decrypt, {failed} do not"
            ));
        }
        if totals.empty > 0 {
            line.push_str(&format!("; {} without a token yet", totals.empty));
        }
        writeln!(out, "{line}")?;
    }
    let rows: usize = totals.iter().map(|(_, t)| t.rows - t.empty).sum();
    let failed: usize = totals.iter().map(|(_, t)| t.failed()).sum();
    let unused: Vec<&str> = keyring
        .key_ids()
        .filter(|key| !used_keys.contains(*key))
        .collect();
    if !unused.is_empty() {
        writeln!(out, "keys that seal no stored row: {}", unused.join(", "))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if failed > 0 {
        out.flush()?;
        return Err(TokensError::Undecryptable {
            failed,
            rows,
            keyring: store.keyring_path.display().to_string(),
        });
    }
    writeln!(
        out,
        "all {rows} stored rows decrypt with the keyring {} ({seconds:.1} s)",
        store.keyring_path.display()
    )?;
    Ok(())
}

/// One value that does not open: where, and why.
fn describe(failure: &SealFailure) -> String {
    let subject = match failure.table {
        "tokens" => "user",
        _ => "token key",
    };
    format!(
        "FAILED {} row {}: {subject} '{}', provider '{}', key '{}', column {}: {}",
        failure.table,
        failure.id,
        failure.subject,
        failure.provider,
        failure.key_id,
        failure.column,
        failure.reason
    )
}
