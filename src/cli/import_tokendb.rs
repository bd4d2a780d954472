//! `import-dirac-tokendb`: copies a running DIRAC's `Token` table (plaintext,
//! docs/DIRAC.md#the-token-table) into our encrypted store, through the DB actor, so that
//! encryption and the row's generation are those of every other token write.
//!
//! Each DIRAC row is first judged on its own: refused if DIRAC's `updateToken` would refuse it
//! (no user ID, no provider, no refresh token, a token over 32 KiB), skipped if its refresh token
//! has expired (`rt_expires_at <= now`; 0 included, as DIRAC never serves such a row either).
//! Among the remaining rows of one (user_id, provider) the newest wins: highest `issued_at`, then
//! highest `id` (the later insert); the others are skipped as duplicates. The winner is then
//! stored unless we hold a credential of our own ([`ImportOutcome`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{CliError, audit};
use crate::actors::db::DbOperation;
use crate::app::{open_database, open_keyring};
use crate::config::Settings;
use crate::db::dirac_tokendb::{self, DiracToken};
use crate::db::{ImportOutcome, PoolOptions};
use crate::domain::audit::{AuditKind, AuditRecord};
use crate::domain::{NewToken, TokenDictError, unix_now};
use crate::metrics::Metrics;

/// A DIRAC row that cannot be stored, and why (DIRAC's own message where it has one).
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    row_id: i64,
    user_id: String,
    provider: String,
    reason: String,
}

/// What to store: one token per (user_id, provider), and what was left out.
#[derive(Debug, Default)]
struct Plan {
    tokens: Vec<NewToken>,
    skipped_expired: usize,
    skipped_duplicate: usize,
    refused: Vec<Refusal>,
}

/// Picks the rows to import; pure, so that the rules are tested without a database.
fn plan(rows: Vec<DiracToken>, now: i64) -> Plan {
    let mut plan = Plan::default();
    // (user_id, provider) -> (issued_at, id, token) of the newest usable row so far.
    let mut newest: BTreeMap<(String, String), (i64, i64, NewToken)> = BTreeMap::new();
    for row in rows {
        let user_id = row.user_id.clone().unwrap_or_default();
        let provider = row.provider.clone().unwrap_or_default();
        let token = match NewToken::from_dirac_dict(&dirac_dict(&row), &user_id, &provider, 0, now)
        {
            Ok(_) | Err(TokenDictError::ExpiredRefreshToken) if row.rt_expires_at <= now => {
                plan.skipped_expired += 1;
                continue;
            }
            Ok(token) => token,
            Err(refusal) => {
                plan.refused.push(Refusal {
                    row_id: row.id,
                    user_id,
                    provider,
                    reason: refusal.to_string(),
                });
                continue;
            }
        };
        let candidate = (row.issued_at, row.id, token);
        match newest.entry((user_id, provider)) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(candidate);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                plan.skipped_duplicate += 1;
                let held = slot.get();
                if (candidate.0, candidate.1) > (held.0, held.1) {
                    slot.insert(candidate);
                }
            }
        }
    }
    plan.tokens = newest.into_values().map(|(_, _, token)| token).collect();
    plan
}

/// The row as the token dictionary DIRAC's `updateToken` would have received, so that it passes
/// the same checks and normalisation (scope set, absent values) as a token stored by the service.
fn dirac_dict(row: &DiracToken) -> Map<String, Value> {
    let mut dict = Map::new();
    let mut text = |key: &str, value: Option<&str>| {
        if let Some(value) = value {
            dict.insert(key.to_owned(), Value::from(value));
        }
    };
    text(
        "refresh_token",
        row.refresh_token.as_ref().map(|t| t.expose()),
    );
    text(
        "access_token",
        row.access_token.as_ref().map(|t| t.expose()),
    );
    text("client_id", row.client_id.as_deref());
    text("token_type", row.token_type.as_deref());
    text("scope", row.scope.as_deref());
    for (key, value) in [
        ("rt_expires_at", row.rt_expires_at),
        ("expires_at", row.expires_at),
        ("issued_at", row.issued_at),
        ("expires_in", row.expires_in),
    ] {
        dict.insert(key.to_owned(), Value::from(value));
    }
    dict
}

pub async fn run(
    settings: Settings,
    source: &str,
    password_file: Option<&Path>,
    dry_run: bool,
) -> Result<(), CliError> {
    // The source is read whole before our store is touched: an unreadable source changes nothing.
    let source = dirac_tokendb::source_url(source, password_file)?;
    let rows = dirac_tokendb::read_tokens(&source)?;
    let read = rows.len();
    let now = unix_now();
    let plan = plan(rows, now);

    let keyring = open_keyring(&settings)?;
    let options = PoolOptions {
        max_size: 1,
        ..Default::default()
    };
    // Nothing scrapes a command's metrics.
    let metrics = Arc::new(Metrics::unexported());
    let database = open_database(&settings.database, keyring, options, metrics).await?;
    if !dry_run {
        database.migrate().await?;
    }
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut changes = Vec::new();
    for token in plan.tokens {
        let (user_id, provider) = (token.user_id.clone(), token.provider.clone());
        let client_id = token.client_id.clone();
        let outcome = database
            .run(DbOperation::ImportToken, move |store, conn| {
                store.import_token(conn, &token, now, dry_run)
            })
            .await?;
        tracing::debug!(user_id, provider, outcome = outcome.as_str(), "import");
        *outcomes.entry(outcome.as_str()).or_default() += 1;
        if !dry_run && matches!(outcome, ImportOutcome::Imported | ImportOutcome::Updated) {
            changes.push(AuditRecord {
                kind: AuditKind::Import,
                outcome: "ok".into(),
                user_id: Some(user_id),
                provider: Some(provider),
                client_id,
                detail: Some(format!("{} from {}", outcome.as_str(), source.masked())),
                ..AuditRecord::default()
            });
        }
    }
    if let Err(error) = audit::append(&database, changes).await {
        eprintln!("warning: the import is done, but its audit records were not written: {error}");
    }

    if dry_run {
        println!("dry run: nothing written; the counts are what an import would do now");
    }
    println!(
        "read {read} rows from DIRAC's Token table at {}",
        source.masked()
    );
    let count = |outcome: ImportOutcome| outcomes.get(outcome.as_str()).copied().unwrap_or(0);
    println!(
        "imported={} updated={} unchanged={} kept_ours={} skipped_expired={} \
         skipped_duplicate={} refused={}",
        count(ImportOutcome::Imported),
        count(ImportOutcome::Updated),
        count(ImportOutcome::Unchanged),
        count(ImportOutcome::KeptOurs),
        plan.skipped_expired,
        plan.skipped_duplicate,
        plan.refused.len(),
    );
    for refusal in &plan.refused {
        println!(
            "refused row id={} (user_id {:?}, provider {:?}): {}",
            refusal.row_id, refusal.user_id, refusal.provider, refusal.reason
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Secret;

    const NOW: i64 = 1_800_000_000;

    fn row(id: i64, user: &str, provider: &str, refresh: &str, issued_at: i64) -> DiracToken {
        DiracToken {
            id,
            user_id: Some(user.into()),
            provider: Some(provider.into()),
            refresh_token: Some(Secret::new(refresh)),
            access_token: Some(Secret::new(format!("at-{refresh}"))),
            rt_expires_at: NOW + 3600,
            expires_at: NOW + 60,
            expires_in: 3600,
            issued_at,
            scope: Some("profile openid".into()),
            token_type: Some("Bearer".into()),
            client_id: None,
        }
    }

    fn refresh_tokens(plan: &Plan) -> Vec<(&str, &str, &str)> {
        plan.tokens
            .iter()
            .map(|t| {
                (
                    t.user_id.as_str(),
                    t.provider.as_str(),
                    t.refresh_token.expose(),
                )
            })
            .collect()
    }

    #[test]
    fn the_newest_row_of_a_pair_wins_by_issued_at_then_id() {
        let rows = vec![
            row(1, "u1", "IAM", "old", NOW - 300),
            row(2, "u1", "IAM", "newest", NOW - 100),
            row(3, "u1", "IAM", "middle", NOW - 200),
            row(4, "u2", "IAM", "tie-low-id", NOW - 50),
            row(5, "u2", "IAM", "tie-high-id", NOW - 50),
            row(6, "u1", "CERN", "other-provider", NOW - 400),
        ];
        let plan = plan(rows, NOW);
        assert_eq!(
            refresh_tokens(&plan),
            [
                ("u1", "CERN", "other-provider"),
                ("u1", "IAM", "newest"),
                ("u2", "IAM", "tie-high-id"),
            ]
        );
        assert_eq!((plan.skipped_duplicate, plan.skipped_expired), (3, 0));
        assert!(plan.refused.is_empty());
    }

    #[test]
    fn expired_rows_are_skipped_and_do_not_compete() {
        let mut expired = row(2, "u1", "IAM", "expired-but-newer", NOW);
        expired.rt_expires_at = NOW;
        let mut zero = row(3, "u2", "IAM", "zero", NOW);
        zero.rt_expires_at = 0;
        let plan = plan(
            vec![row(1, "u1", "IAM", "live", NOW - 10), expired, zero],
            NOW,
        );
        assert_eq!(refresh_tokens(&plan), [("u1", "IAM", "live")]);
        assert_eq!((plan.skipped_expired, plan.skipped_duplicate), (2, 0));
    }

    #[test]
    fn rows_diracs_update_token_would_refuse_are_refused_with_its_reason() {
        let empty_refresh = row(1, "u1", "IAM", "", NOW);
        let mut no_refresh = row(2, "u1", "IAM", "x", NOW);
        no_refresh.refresh_token = None;
        let mut no_user = row(3, "", "IAM", "r", NOW);
        no_user.user_id = None;
        let no_provider = row(4, "u1", " ", "r", NOW);
        let mut expired_and_empty = row(5, "u1", "IAM", "", NOW);
        expired_and_empty.rt_expires_at = 0;
        let plan = plan(
            vec![
                empty_refresh,
                no_refresh,
                no_user,
                no_provider,
                expired_and_empty,
            ],
            NOW,
        );
        assert!(plan.tokens.is_empty());
        let reasons: Vec<(i64, &str)> = plan
            .refused
            .iter()
            .map(|r| (r.row_id, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (1, "Cannot store token without a refresh token."),
                (2, "Cannot store token without a refresh token."),
                (3, "userID must not be empty"),
                (4, "provider must not be empty"),
                (5, "Cannot store token without a refresh token."),
            ]
        );
        assert_eq!(plan.skipped_expired, 0);
    }

    #[test]
    fn imported_tokens_keep_diracs_values_normalised_as_the_service_stores_them() {
        let mut bare = row(7, "u1", "IAM", "r", 0);
        bare.access_token = Some(Secret::new(""));
        bare.token_type = None;
        bare.client_id = None;
        bare.scope = None;
        bare.expires_at = 0;
        bare.expires_in = 0;
        let plan = plan(vec![bare, row(8, "u2", "IAM", "r2", NOW - 5)], NOW);
        let (bare, full) = (&plan.tokens[0], &plan.tokens[1]);
        assert_eq!(bare.rt_expires_at, NOW + 3600);
        assert!(bare.access_token.is_none());
        assert_eq!(
            (
                bare.token_type.as_deref(),
                bare.scope.as_str(),
                bare.issued_at
            ),
            (None, "", NOW)
        );
        assert_eq!(full.scope, "profile openid");
        assert_eq!(full.access_token.as_ref().unwrap().expose(), "at-r2");
        assert_eq!(
            (full.expires_at, full.expires_in, full.issued_at),
            (NOW + 60, 3600, NOW - 5)
        );
    }

    #[test]
    fn a_refusal_never_holds_a_token() {
        let mut huge = row(1, "u1", "IAM", "r-secret", NOW);
        huge.access_token = Some(Secret::new("a".repeat(64 * 1024)));
        let plan = plan(vec![huge], NOW);
        assert_eq!(plan.refused.len(), 1);
        assert!(!format!("{:?}", plan.refused).contains("r-secret"));
        assert!(!format!("{:?}", plan.refused).contains("aaaa"));
    }
}
