//! `export-dirac-tokendb`: writes our current refresh tokens back into DIRAC's own `Token` table
//! (plaintext, docs/DIRAC.md#the-token-table), so that DIRAC's TokenManager can take over again
//! without a new login (docs/OPERATIONS.md#switching-back-to-dirac).
//!
//! DIRAC keeps no unique key on (user_id, provider) and its getToken takes an arbitrary live row
//! of the pair, so a credential of ours replaces *every* DIRAC row of its pair, and only when it
//! was written after each of them ([`plan`]). Everything is written in one transaction on DIRAC's
//! database, committed only if none of our credentials changed while the command ran: a token a
//! running service rotates after we read it would otherwise reach DIRAC already dead.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::{CliError, audit};
use crate::app::{open_database, open_keyring};
use crate::config::Settings;
use crate::crypto::SharedKeyring;
use crate::db::dirac_tokendb::{self, DiracToken, DiracTransaction, ExportRow, Replacement};
use crate::db::{
    CredentialPair, CredentialVersion, ExportCandidate, ExportSkip, LockError, PoolOptions,
    SqliteServeLock, StoredToken, TokenStore, establish, other_sessions,
};
use crate::domain::audit::{AuditKind, AuditRecord};
use crate::domain::unix_now;
use crate::metrics::Metrics;

/// The flag without which nothing is written: DIRAC stores tokens in clear text.
const CLEARTEXT_FLAG: &str = "--i-understand-tokens-are-stored-in-clear";

/// What the export does with one of our usable credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// DIRAC had no row for the pair: ours is inserted.
    Exported,
    /// DIRAC's rows of the pair were all written before ours (or are expired, or hold our very
    /// refresh token): they are deleted and ours is inserted.
    Replaced,
    /// DIRAC's only row of the pair holds our refresh token: nothing to write.
    Unchanged,
    /// DIRAC holds a live row of the pair with another refresh token, issued at or after our
    /// last write: a login DIRAC took after ours; DIRAC's rows stay.
    KeptDirac,
}

/// A credential that is not exported because it does not decrypt.
#[derive(Debug, PartialEq, Eq)]
struct Failure {
    id: i64,
    user_id: String,
    provider: String,
    reason: String,
}

/// What the export writes and what it counts.
#[derive(Debug, Default)]
struct Plan {
    replacements: Vec<Replacement>,
    outcomes: BTreeMap<Outcome, usize>,
    skipped_needs_redelegation: usize,
    skipped_expired: usize,
    failed: Vec<Failure>,
}

impl Plan {
    fn count(&self, outcome: Outcome) -> usize {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }
}

/// Decides, for each of our credentials, what becomes of DIRAC's rows of its pair; pure, so that
/// the rule is tested without a database.
fn plan(candidates: Vec<ExportCandidate>, dirac: &[DiracToken], now: i64) -> Plan {
    let mut by_pair: HashMap<(&str, &str), Vec<&DiracToken>> = HashMap::new();
    for row in dirac {
        if let (Some(user_id), Some(provider)) = (row.user_id.as_deref(), row.provider.as_deref()) {
            by_pair.entry((user_id, provider)).or_default().push(row);
        }
    }
    let mut plan = Plan::default();
    for candidate in candidates {
        let ours = match candidate {
            ExportCandidate::Usable(ours) => ours,
            ExportCandidate::Skipped {
                id,
                user_id,
                provider,
                reason,
            } => {
                match reason {
                    ExportSkip::NeedsRedelegation => plan.skipped_needs_redelegation += 1,
                    ExportSkip::Expired => plan.skipped_expired += 1,
                    ExportSkip::DoesNotDecrypt(reason) => plan.failed.push(Failure {
                        id,
                        user_id,
                        provider,
                        reason: format!("does not decrypt: {reason}"),
                    }),
                }
                continue;
            }
        };
        let rows = by_pair
            .get(&(ours.user_id.as_str(), ours.provider.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let holds_ours = |row: &DiracToken| row.refresh_token.as_ref() == Some(&ours.refresh_token);
        let outcome = match rows {
            [] => Outcome::Exported,
            [only] if holds_ours(only) => Outcome::Unchanged,
            rows if rows.iter().any(|row| {
                !holds_ours(row) && row.rt_expires_at > now && row.issued_at >= ours.updated_at
            }) =>
            {
                Outcome::KeptDirac
            }
            _ => Outcome::Replaced,
        };
        *plan.outcomes.entry(outcome).or_default() += 1;
        if matches!(outcome, Outcome::Exported | Outcome::Replaced) {
            plan.replacements.push(Replacement {
                delete: rows.iter().map(|row| row.id).collect(),
                insert: export_row(*ours),
            });
        }
    }
    plan
}

/// Our credential as DIRAC's row. DIRAC's getToken refreshes on every call and never serves the
/// stored access token (docs/DIRAC.md#gettoken), so none is handed over: `access_token` is ''
/// and `expires_at` is the refresh token's expiry, since DIRAC's `updateToken` deletes every row
/// whose `expires_at` has passed (docs/DIRAC.md#reading-and-writing-tokens) and would otherwise
/// drop exported credentials an hour after the switch. `issued_at` is when we stored this refresh
/// token, the time the replace rule compares; the scope is the one the user delegated.
fn export_row(ours: StoredToken) -> ExportRow {
    let scope = if ours.grant_scope.is_empty() {
        ours.scope
    } else {
        ours.grant_scope
    };
    ExportRow {
        user_id: ours.user_id,
        provider: ours.provider,
        refresh_token: ours.refresh_token,
        rt_expires_at: ours.rt_expires_at,
        expires_at: ours.rt_expires_at,
        client_id: ours.client_id,
        token_type: ours.token_type,
        scope,
        issued_at: ours.updated_at,
    }
}

pub async fn run(
    settings: Settings,
    target: &str,
    password_file: Option<&Path>,
    dry_run: bool,
    cleartext_confirmed: bool,
    force: bool,
) -> Result<(), CliError> {
    if !dry_run && !cleartext_confirmed {
        return Err(CliError::Export(format!(
            "refusing to write: DIRAC keeps tokens in clear text, so export-dirac-tokendb copies \
             every user's refresh token unencrypted into DIRAC's Token table, where anyone who can \
             read that database or its backups can act as those users. Pass {CLEARTEXT_FLAG} to \
             write them, or --dry-run to see what it would do"
        )));
    }
    let target = dirac_tokendb::source_url(target, password_file)?;
    let keyring = open_keyring(&settings)?;
    let store = TokenStore::new(keyring.clone());
    let mut conn = establish(&settings.database)?;
    // Held until the end: no serve starts on the SQLite file while we export.
    let _sqlite_lock = if dry_run {
        None
    } else {
        refuse_while_serving(&settings, &mut conn, force)?
    };

    let now = unix_now();
    let versions_before = store.credential_versions(&mut conn)?;
    let candidates = store.export_candidates(&mut conn, now)?;
    let ours = candidates.len();
    let (mut transaction, rows) = DiracTransaction::begin(&target, dry_run)?;
    let plan = plan(candidates, &rows, now);
    if !dry_run {
        transaction.apply(&plan.replacements)?;
        let versions_after = store.credential_versions(&mut conn)?;
        let changed = changed_credentials(&versions_before, &versions_after);
        if changed > 0 {
            // Dropping the transaction rolls DIRAC's database back.
            return Err(CliError::Export(format!(
                "{changed} of our credentials changed while exporting (a tokenmanager service is \
                 still writing to this database): nothing was written to DIRAC. Stop every \
                 replica and run the export again"
            )));
        }
        transaction.commit()?;
        record_in_audit_trail(&settings, keyring, &plan.replacements, &target.masked()).await;
    }

    if dry_run {
        println!("dry run: nothing written; the counts are what an export would do now");
    } else {
        eprintln!(
            "note: DIRAC's Token table at {} now holds these refresh tokens in clear text",
            target.masked()
        );
    }
    println!(
        "read {ours} credentials from our database and {} rows from DIRAC's Token table at {}",
        rows.len(),
        target.masked()
    );
    println!(
        "exported={} replaced={} unchanged={} kept_dirac={} skipped_needs_redelegation={} \
         skipped_expired={} failed={}",
        plan.count(Outcome::Exported),
        plan.count(Outcome::Replaced),
        plan.count(Outcome::Unchanged),
        plan.count(Outcome::KeptDirac),
        plan.skipped_needs_redelegation,
        plan.skipped_expired,
        plan.failed.len(),
    );
    for failure in &plan.failed {
        println!(
            "failed credential id={} (user_id {:?}, provider {:?}): {}",
            failure.id, failure.user_id, failure.provider, failure.reason
        );
    }
    Ok(())
}

/// One `export` record per credential written into DIRAC's table. The export is done: a trail
/// that cannot be written is a warning, not a failure.
async fn record_in_audit_trail(
    settings: &Settings,
    keyring: Arc<SharedKeyring>,
    replacements: &[Replacement],
    target: &str,
) {
    if replacements.is_empty() {
        return;
    }
    let records = replacements
        .iter()
        .map(|replacement| AuditRecord {
            kind: AuditKind::Export,
            outcome: "ok".into(),
            user_id: Some(replacement.insert.user_id.clone()),
            provider: Some(replacement.insert.provider.clone()),
            client_id: replacement.insert.client_id.clone(),
            detail: Some(match replacement.delete.len() {
                0 => format!("exported to {target}"),
                rows => format!("replaced {rows} DIRAC rows at {target}"),
            }),
            ..AuditRecord::default()
        })
        .collect();
    let options = PoolOptions {
        max_size: 1,
        ..Default::default()
    };
    // Nothing scrapes a command's metrics.
    let metrics = Arc::new(Metrics::unexported());
    let written = match open_database(&settings.database, keyring, options, metrics).await {
        Ok(database) => audit::append(&database, records).await,
        Err(error) => Err(error.into()),
    };
    if let Err(error) = written {
        eprintln!("warning: the export is done, but its audit records were not written: {error}");
    }
}

/// Refuses to export while a `serve` may be using our database, unless `force`: a token it
/// rotated after the export would be lost to DIRAC. On SQLite the serve lock says so exactly
/// (and is returned, to be held until the export ends); on PostgreSQL and MariaDB any other
/// session on the database counts, since each replica keeps several there.
fn refuse_while_serving(
    settings: &Settings,
    conn: &mut crate::db::DbConn,
    force: bool,
) -> Result<Option<SqliteServeLock>, CliError> {
    let database = settings.database.masked();
    let (lock, in_use) = match settings.database.sqlite_path() {
        Some(path) => match SqliteServeLock::acquire(Path::new(path)) {
            Ok(lock) => (Some(lock), None),
            Err(busy @ LockError::Busy { .. }) => (None, Some(busy.to_string())),
            Err(e) => return Err(CliError::Export(e.to_string())),
        },
        None => {
            let sessions = other_sessions(conn)?;
            let in_use = (!sessions.is_empty()).then(|| {
                let shown: Vec<&str> = sessions.iter().take(5).map(String::as_str).collect();
                format!(
                    "{} other sessions are connected to {database} ({}{})",
                    sessions.len(),
                    shown.join(", "),
                    if sessions.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    }
                )
            });
            (None, in_use)
        }
    };
    match in_use {
        Some(why) if !force => Err(CliError::Export(format!(
            "refusing to export while a tokenmanager service may be running: {why}. A token it \
             rotates after the export would be lost to DIRAC. Stop every replica first \
             (docs/OPERATIONS.md#switching-back-to-dirac), or pass --force if these sessions are \
             not tokenmanager's"
        ))),
        Some(why) => {
            eprintln!("warning: --force: exporting although {why}");
            Ok(lock)
        }
        None => Ok(lock),
    }
}

/// How many credentials were added, deleted or written between the two reads.
fn changed_credentials(
    before: &HashMap<CredentialPair, CredentialVersion>,
    after: &HashMap<CredentialPair, CredentialVersion>,
) -> usize {
    let changed_or_gone = before
        .iter()
        .filter(|(pair, version)| after.get(*pair) != Some(version))
        .count();
    let added = after
        .keys()
        .filter(|pair| !before.contains_key(*pair))
        .count();
    changed_or_gone + added
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CredentialState, Secret};

    const NOW: i64 = 1_800_000_000;

    fn ours(id: i64, user: &str, refresh: &str, updated_at: i64) -> ExportCandidate {
        ExportCandidate::Usable(Box::new(StoredToken {
            id,
            user_id: user.into(),
            provider: "IAM".into(),
            state: CredentialState::Active,
            generation: 3,
            key_id: "k1".into(),
            refresh_token: Secret::new(refresh),
            rt_expires_at: NOW + 86_400,
            access_token: Some(Secret::new("at-stale")),
            expires_at: NOW - 60,
            expires_in: 3600,
            token_type: Some("Bearer".into()),
            scope: "openid".into(),
            audience: None,
            client_id: Some("tm".into()),
            issued_at: updated_at - 5,
            access_token_revoked_at: 0,
            refresh_token_revoked_at: 0,
            lease_owner: None,
            lease_expires_at: None,
            created_at: updated_at - 100,
            updated_at,
            grant_scope: "openid offline_access".into(),
        }))
    }

    fn dirac(id: i64, user: &str, refresh: &str, issued_at: i64, live: bool) -> DiracToken {
        DiracToken {
            id,
            user_id: Some(user.into()),
            provider: Some("IAM".into()),
            refresh_token: Some(Secret::new(refresh)),
            rt_expires_at: if live { NOW + 3600 } else { NOW - 1 },
            issued_at,
            ..Default::default()
        }
    }

    fn outcome_of(plan: &Plan) -> [usize; 4] {
        [
            Outcome::Exported,
            Outcome::Replaced,
            Outcome::Unchanged,
            Outcome::KeptDirac,
        ]
        .map(|o| plan.count(o))
    }

    #[test]
    fn ours_replaces_every_dirac_row_of_the_pair_written_before_it() {
        let rows = [
            dirac(1, "u1", "rt-old", NOW - 300, true),
            dirac(2, "u1", "rt-older", NOW - 400, true),
            // An expired row newer than ours does not hold DIRAC's grant any more.
            dirac(3, "u1", "rt-dead", NOW, false),
            dirac(4, "other", "rt-x", NOW, true),
        ];
        let plan = plan(vec![ours(7, "u1", "rt-ours", NOW - 100)], &rows, NOW);
        assert_eq!(outcome_of(&plan), [0, 1, 0, 0]);
        let [replacement] = plan.replacements.as_slice() else {
            panic!("one replacement");
        };
        assert_eq!(replacement.delete, [1, 2, 3]);
        let row = &replacement.insert;
        assert_eq!(row.refresh_token.expose(), "rt-ours");
        assert_eq!(
            (row.issued_at, row.rt_expires_at, row.expires_at),
            (NOW - 100, NOW + 86_400, NOW + 86_400)
        );
        assert_eq!(row.scope, "openid offline_access");
        assert_eq!(
            (row.client_id.as_deref(), row.token_type.as_deref()),
            (Some("tm"), Some("Bearer"))
        );
    }

    #[test]
    fn a_live_dirac_login_at_or_after_our_write_is_kept() {
        let rows = [
            dirac(1, "u1", "rt-old", NOW - 300, true),
            dirac(2, "u1", "rt-dirac-login", NOW - 100, true),
        ];
        let plan = plan(vec![ours(7, "u1", "rt-ours", NOW - 100)], &rows, NOW);
        assert_eq!(outcome_of(&plan), [0, 0, 0, 1]);
        assert!(plan.replacements.is_empty());
    }

    #[test]
    fn a_pair_dirac_lacks_is_exported_and_our_only_row_is_unchanged() {
        let rows = [
            dirac(1, "u2", "rt-u2", NOW + 50, true),
            // Our token among older duplicates: they go, so that DIRAC can only pick ours.
            dirac(2, "u3", "rt-u3", NOW - 10, true),
            dirac(3, "u3", "rt-u3-old", NOW - 500, true),
        ];
        let plan = plan(
            vec![
                ours(1, "u1", "rt-u1", NOW - 100),
                ours(2, "u2", "rt-u2", NOW - 100),
                ours(3, "u3", "rt-u3", NOW - 100),
            ],
            &rows,
            NOW,
        );
        assert_eq!(outcome_of(&plan), [1, 1, 1, 0]);
        let deleted: Vec<&[i64]> = plan.replacements.iter().map(|r| &r.delete[..]).collect();
        assert_eq!(deleted, [&[][..], &[2, 3][..]]);
    }

    #[test]
    fn skipped_and_failed_credentials_are_counted_without_a_value() {
        let skipped = |id, reason| ExportCandidate::Skipped {
            id,
            user_id: "u".into(),
            provider: "IAM".into(),
            reason,
        };
        let plan = plan(
            vec![
                skipped(1, ExportSkip::NeedsRedelegation),
                skipped(2, ExportSkip::Expired),
                skipped(3, ExportSkip::DoesNotDecrypt("no key k9".into())),
            ],
            &[],
            NOW,
        );
        assert_eq!(outcome_of(&plan), [0, 0, 0, 0]);
        assert_eq!(
            (plan.skipped_needs_redelegation, plan.skipped_expired),
            (1, 1)
        );
        assert_eq!(
            plan.failed,
            [Failure {
                id: 3,
                user_id: "u".into(),
                provider: "IAM".into(),
                reason: "does not decrypt: no key k9".into()
            }]
        );
        assert!(plan.replacements.is_empty());
    }

    #[test]
    fn any_added_deleted_or_written_credential_counts_as_changed() {
        let v = |id, generation| CredentialVersion { id, generation };
        let pair = |u: &str| (u.to_owned(), "IAM".to_owned());
        let before = HashMap::from([
            (pair("a"), v(1, 1)),
            (pair("b"), v(2, 4)),
            (pair("c"), v(3, 1)),
        ]);
        assert_eq!(changed_credentials(&before, &before), 0);
        let after = HashMap::from([
            (pair("a"), v(1, 2)),
            (pair("b"), v(2, 4)),
            (pair("d"), v(9, 1)),
        ]);
        assert_eq!(changed_credentials(&before, &after), 3);
    }
}
