//! `tokens revoke`: revokes a credential's refresh token at its IdP (RFC 7009), then deletes
//! the credential. The deletion is compare-and-set on the version that was revoked: a server
//! that refreshed the credential in between (a rotated refresh token) makes this revoke the new
//! one too. The database announces the deletion to every running replica (the change feed),
//! which stop serving the user's cached tokens within `MaxStaleness`.

use std::sync::Arc;

use clap::Args;

use super::{Store, TokensError};
use crate::actors::db::{Database, DbOperation};
use crate::config::Settings;
use crate::db::CredentialRecord;
use crate::domain::Secret;
use crate::domain::audit::{AuditKind, AuditRecord};
use crate::idp::{IdpClient, IdpOptions};
use crate::metrics::Metrics;

/// Revocations in a row that a concurrent refresh may make this start again.
const ATTEMPTS: usize = 3;

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The user ID, as stored (`tokens list` shows them).
    #[arg(value_name = "USER_ID")]
    user_id: String,
    /// The identity provider.
    #[arg(value_name = "PROVIDER")]
    provider: String,
    /// Delete the credential even if the IdP did not revoke it (refused, unreachable, not
    /// configured, or the stored token does not decrypt). The grant then stays alive at the
    /// IdP until it expires or is revoked there.
    #[arg(long)]
    force: bool,
}

pub(super) async fn run(
    store: &Store,
    settings: &Settings,
    args: &RevokeArgs,
) -> Result<(), TokensError> {
    let idp = idp_client(settings, &args.provider);
    for attempt in 0..ATTEMPTS {
        let (user_id, provider) = (args.user_id.clone(), args.provider.clone());
        let found = store
            .database
            .run(DbOperation::CredentialRecord, move |store, conn| {
                store.credential_record(conn, &user_id, &provider, true)
            })
            .await?;
        let Some((record, opened)) = found else {
            if attempt == 0 {
                return Err(store
                    .not_found(settings, &args.user_id, &args.provider)
                    .await?);
            }
            println!(
                "the credential of '{}' at '{}' was deleted meanwhile by another writer",
                args.user_id, args.provider
            );
            return Ok(());
        };
        let revocation = match (&idp, opened.expect("asked to open")) {
            (Err(why), _) => Err(why.clone()),
            (Ok(_), Err(failure)) => Err(format!(
                "its stored {} does not decrypt: {}",
                failure.column, failure.reason
            )),
            (Ok(idp), Ok(tokens)) => revoke_at_idp(idp, &tokens.refresh_token).await,
        };
        if let Err(why) = &revocation {
            if !args.force {
                return Err(TokensError::NotRevoked(format!(
                    "the refresh token of '{}' at '{}' was not revoked: {why}. Nothing was \
                     deleted; --force deletes the credential anyway, leaving its grant alive at \
                     the IdP",
                    args.user_id, args.provider
                )));
            }
            eprintln!(
                "WARNING: the refresh token of '{}' at '{}' was not revoked: {why}. Deleting the \
                 credential anyway (--force): its grant stays alive at the IdP",
                args.user_id, args.provider
            );
        }
        let version = record.version();
        let deleted = store
            .database
            .run(DbOperation::DeleteCredential, move |store, conn| {
                store.delete_credential(conn, version)
            })
            .await?;
        record_revocation(
            &store.database,
            &RevocationRecord {
                credential: &record,
                revoked_at_idp: &revocation,
                forced: args.force,
                deleted,
            },
        )
        .await;
        if deleted {
            let how = if revocation.is_ok() {
                "revoked its refresh token at the IdP and deleted"
            } else {
                "deleted, without revoking,"
            };
            println!(
                "{how} the credential of '{}' at '{}' (row {}, generation {})",
                record.user_id, record.provider, record.id, record.generation
            );
            return Ok(());
        }
        eprintln!(
            "the credential of '{}' at '{}' changed while it was revoked (a server refreshed \
             it); revoking the refresh token now stored",
            args.user_id, args.provider
        );
    }
    Err(TokensError::NotRevoked(format!(
        "the credential of '{}' at '{}' kept changing under concurrent refreshes ({ATTEMPTS} \
         revocations); it was not deleted: run tokens revoke again",
        args.user_id, args.provider
    )))
}

/// The client of the IdP named `provider` in the configuration, or why there is none.
fn idp_client(settings: &Settings, provider: &str) -> Result<Arc<IdpClient>, String> {
    let section = settings
        .idps
        .iter()
        .find(|idp| idp.name() == provider)
        .ok_or_else(|| {
            format!("no identity provider '{provider}' is configured (/Resources/IdProviders)")
        })?;
    let options = IdpOptions::from_config(section).map_err(|error| error.to_string())?;
    // Nothing scrapes a command's metrics.
    let metrics = Arc::new(Metrics::unexported());
    IdpClient::new(options, metrics)
        .map(Arc::new)
        .map_err(|error| error.to_string())
}

async fn revoke_at_idp(idp: &IdpClient, refresh_token: &Secret) -> Result<(), String> {
    idp.revoke(refresh_token)
        .await
        .map_err(|error| error.to_string())
}

/// What one revocation did, for the record.
struct RevocationRecord<'a> {
    credential: &'a CredentialRecord,
    /// Whether the IdP revoked the refresh token, or why not.
    revoked_at_idp: &'a Result<(), String>,
    forced: bool,
    /// Whether the credential was deleted (no: a concurrent write changed it first).
    deleted: bool,
}

/// Records a revocation in the audit trail (and the log): what the IdP said, whether it was
/// forced, whether the row was deleted. A record that cannot be written is a warning: the
/// revocation itself stands.
async fn record_revocation(database: &Database, record: &RevocationRecord<'_>) {
    let credential = record.credential;
    let operator = std::env::var("USER").unwrap_or_default();
    tracing::info!(
        user_id = %credential.user_id,
        provider = %credential.provider,
        row = credential.id,
        generation = credential.generation,
        revoked_at_idp = record.revoked_at_idp.is_ok(),
        idp_error = record.revoked_at_idp.as_ref().err().map(String::as_str),
        forced = record.forced,
        deleted = record.deleted,
        operator,
        "tokens revoke"
    );
    let mut detail = match record.revoked_at_idp {
        Ok(()) => "revoked at the IdP".to_owned(),
        Err(why) => format!("not revoked at the IdP ({why}); deleted with --force"),
    };
    if !record.deleted {
        detail.push_str("; the row changed meanwhile and was not deleted");
    }
    let entry = AuditRecord {
        kind: AuditKind::Revoke,
        outcome: "ok".into(),
        user_id: Some(credential.user_id.clone()),
        provider: Some(credential.provider.clone()),
        detail: Some(format!("{detail} (generation {})", credential.generation)),
        ..AuditRecord::default()
    };
    if let Err(error) = crate::cli::audit::append(database, vec![entry]).await {
        eprintln!("warning: the revocation's audit record was not written: {error}");
    }
}
