//! `audit`: reads the audit trail from the configured database (the service need not run), and
//! what the other subcommands add to it.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::CliError;
use crate::actors::db::{Database, DbOperation};
use crate::app::{open_database, open_keyring};
use crate::config::Settings;
use crate::db::PoolOptions;
use crate::db::audit::{self, AuditQuery};
use crate::domain::audit::{AuditRecord, Protocol};
use crate::domain::{unix_now, utc_timestamp};
use crate::metrics::Metrics;

/// What `tokenmanager audit` was asked for.
pub struct AuditArgs {
    pub user: Option<String>,
    pub provider: Option<String>,
    pub since: Option<Duration>,
    pub limit: i64,
    pub json: bool,
}

pub async fn run(settings: Settings, args: AuditArgs) -> Result<(), CliError> {
    let database = open(&settings).await?;
    let mut query = AuditQuery {
        provider: args.provider,
        since: args
            .since
            .map_or(0, |since| unix_now() - since.as_secs() as i64),
        limit: args.limit,
        ..AuditQuery::default()
    };
    if let Some(user) = args.user {
        // A DIRAC user name (its IdP user IDs from the Registry) or an IdP user ID.
        query.user_ids = settings
            .registry
            .id_dns_for_user(&user)
            .into_iter()
            .map(str::to_owned)
            .collect();
        query.user_ids.push(user.clone());
        query.usernames = vec![user];
    }
    let records = database
        .run(DbOperation::AuditRead, move |_, conn| {
            audit::read(conn, &query)
        })
        .await
        .map_err(missing_table)?;
    if args.json {
        let rows: Vec<_> = records.iter().map(|r| r.record.to_json(r.id)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into())
        );
        return Ok(());
    }
    if records.is_empty() {
        eprintln!("no audit records match");
        return Ok(());
    }
    println!(
        "{:<19}  {:<18}  {:<13}  {:>6}  {:<7}  {:<20}  {:<12}  {:<8}  CALLER",
        "LAST (UTC)", "KIND", "OUTCOME", "COUNT", "ORIGIN", "USER", "PROVIDER", "PROTOCOL"
    );
    for stored in &records {
        let r = &stored.record;
        let user = r
            .on_behalf_of
            .as_deref()
            .or(r.user_id.as_deref())
            .unwrap_or("-");
        println!(
            "{:<19}  {:<18}  {:<13}  {:>6}  {:<7}  {:<20}  {:<12}  {:<8}  {}",
            utc_timestamp(UNIX_EPOCH + Duration::from_secs(r.last_at.max(0) as u64)),
            r.kind.as_str(),
            r.outcome,
            r.occurrences,
            r.origin.map_or("-", |o| o.as_str()),
            user,
            r.provider.as_deref().unwrap_or("-"),
            r.protocol.as_str(),
            r.caller.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

/// Appends the records of a subcommand's credential changes: recorded as the command line's,
/// by the operating-system account that ran it.
pub async fn append(database: &Database, mut records: Vec<AuditRecord>) -> Result<(), CliError> {
    let now = unix_now();
    let account = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let replica = format!(
        "cli:{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
        std::process::id()
    );
    for record in &mut records {
        record.first_at = now;
        record.last_at = now;
        record.occurrences = 1;
        record.protocol = Protocol::Cli;
        record.caller = Some(format!("os-user:{account}"));
        record.replica = replica.clone();
    }
    database
        .run(DbOperation::AuditAppend, move |_, conn| {
            audit::append(conn, &records)
        })
        .await
        .map_err(missing_table)?;
    Ok(())
}

async fn open(settings: &Settings) -> Result<Database, CliError> {
    let keyring = open_keyring(settings)?;
    let options = PoolOptions {
        max_size: 1,
        ..Default::default()
    };
    // Nothing scrapes a command's metrics.
    Ok(open_database(
        &settings.database,
        keyring,
        options,
        Arc::new(Metrics::unexported()),
    )
    .await?)
}

/// A database whose schema predates the audit trail says so.
fn missing_table(error: crate::db::DbError) -> CliError {
    let text = error.to_string();
    if text.contains("audit_events") {
        CliError::Audit(format!(
            "{text}: this database has no audit trail yet; run `tokenmanager migrate` (or start \
             the service once)"
        ))
    } else {
        error.into()
    }
}
