//! `tokens show`: every column of one credential, and whether its values decrypt; the values
//! themselves only with `--show-values`, under a warning.

use std::io::{IsTerminal, Write};

use clap::Args;
use serde_json::{Map, Value, json};

use super::{Store, TokensError, listed_state, when};
use crate::actors::db::DbOperation;
use crate::config::Settings;
use crate::db::{CredentialRecord, NotOpened, OpenedTokens};

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The user ID, as stored (`tokens list` shows them).
    #[arg(value_name = "USER_ID")]
    user_id: String,
    /// The identity provider.
    #[arg(value_name = "PROVIDER")]
    provider: String,
    /// Print the refresh and access tokens themselves. They are secrets: a warning goes to
    /// stderr (and to the terminal, if stdout is one).
    #[arg(long)]
    show_values: bool,
    /// One JSON object (times in Unix seconds).
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(
    store: &Store,
    settings: &Settings,
    args: &ShowArgs,
) -> Result<(), TokensError> {
    let (user_id, provider) = (args.user_id.clone(), args.provider.clone());
    let found = store
        .database
        .run(DbOperation::CredentialRecord, move |store, conn| {
            store.credential_record(conn, &user_id, &provider, true)
        })
        .await?;
    let Some((record, opened)) = found else {
        return Err(store
            .not_found(settings, &args.user_id, &args.provider)
            .await?);
    };
    let opened = opened.expect("asked to open");
    let mut fields = fields(&record, listed_state(&record, &store.keyring));
    match &opened {
        Ok(_) => fields.push(("decrypts", Field::Text("yes".into()))),
        Err(failure) => fields.push((
            "decrypts",
            Field::Text(format!("no: {}: {}", failure.column, failure.reason)),
        )),
    }
    if args.show_values {
        warn_of_secrets(args);
        fields.extend(values(&record, &opened));
    }

    let mut out = std::io::stdout().lock();
    if args.json {
        let object: Map<String, Value> = fields
            .into_iter()
            .map(|(name, field)| (name.to_owned(), field.json()))
            .collect();
        serde_json::to_writer_pretty(&mut out, &object).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        for (name, field) in fields {
            writeln!(out, "{name:<width$}  {}", field.text())?;
        }
    }
    out.flush()?;
    Ok(())
}

/// One shown value: JSON keeps its type, the text form is for people.
enum Field {
    Text(String),
    Number(i64),
    /// A Unix time; 0 or none: never.
    Time(Option<i64>),
    Optional(Option<String>),
    OptionalNumber(Option<i64>),
}

impl Field {
    fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Number(n) => n.to_string(),
            Self::Time(Some(seconds)) if *seconds > 0 => format!("{} ({seconds})", when(*seconds)),
            Self::Time(_) => "-".into(),
            Self::Optional(value) => value.clone().unwrap_or_else(|| "-".into()),
            Self::OptionalNumber(n) => n.map_or_else(|| "-".into(), |n| n.to_string()),
        }
    }

    fn json(self) -> Value {
        match self {
            Self::Text(text) => json!(text),
            Self::Number(n) => json!(n),
            Self::Time(seconds) => json!(seconds),
            Self::Optional(value) => json!(value),
            Self::OptionalNumber(n) => json!(n),
        }
    }
}

/// Every column but the ciphertexts, in the table's order.
fn fields(record: &CredentialRecord, state: &str) -> Vec<(&'static str, Field)> {
    use Field::{Number, Optional, OptionalNumber, Text, Time};
    let r = record.clone();
    vec![
        ("id", Number(r.id)),
        ("user_id", Text(r.user_id)),
        ("provider", Text(r.provider)),
        ("state", Text(state.to_owned())),
        ("stored_state", Text(r.state)),
        ("generation", Number(r.generation)),
        ("key_id", Text(r.key_id)),
        ("rt_expires_at", Time(Some(r.rt_expires_at))),
        (
            "access_token",
            Text(if r.has_access_token { "stored" } else { "none" }.into()),
        ),
        ("expires_at", Time(Some(r.expires_at))),
        ("expires_in", Number(r.expires_in)),
        ("token_type", Optional(r.token_type)),
        ("scope", Text(r.scope)),
        ("grant_scope", Text(r.grant_scope)),
        ("audience", Optional(r.audience)),
        ("client_id", Optional(r.client_id)),
        ("issued_at", Time(Some(r.issued_at))),
        (
            "access_token_revoked_at",
            Time(Some(r.access_token_revoked_at)),
        ),
        (
            "refresh_token_revoked_at",
            Time(Some(r.refresh_token_revoked_at)),
        ),
        ("lease_owner", Optional(r.lease_owner)),
        ("lease_expires_at", Time(r.lease_expires_at)),
        ("created_at", Time(Some(r.created_at))),
        ("updated_at", Time(Some(r.updated_at))),
        ("import_generation", OptionalNumber(r.import_generation)),
    ]
}

/// The token values, for `--show-values`.
fn values(
    record: &CredentialRecord,
    opened: &Result<OpenedTokens, NotOpened>,
) -> Vec<(&'static str, Field)> {
    match opened {
        Ok(tokens) => vec![
            (
                "refresh_token_value",
                Field::Text(tokens.refresh_token.expose().to_owned()),
            ),
            (
                "access_token_value",
                Field::Optional(
                    tokens
                        .access_token
                        .as_ref()
                        .map(|token| token.expose().to_owned()),
                ),
            ),
        ],
        Err(_) => {
            eprintln!(
                "the values of row {} cannot be shown: they do not decrypt",
                record.id
            );
            Vec::new()
        }
    }
}

fn warn_of_secrets(args: &ShowArgs) {
    let warning = format!(
        "WARNING: printing the secret token values of user '{}' at '{}': whoever reads them can \
         act as that user",
        args.user_id, args.provider
    );
    eprintln!("{warning}");
    if std::io::stdout().is_terminal() {
        println!("{warning}");
    }
}
