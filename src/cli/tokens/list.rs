//! `tokens list`: the stored credentials' metadata, as a table or a JSON array; nothing is
//! decrypted and no token value is read.

use std::io::Write;

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::{Store, TokensError, UNDECRYPTABLE, listed_state, parse_span, when};
use crate::db::{CredentialFilter, CredentialRecord};
use crate::domain::{CredentialState, unix_now};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this user's credentials (a user ID, as stored).
    #[arg(long = "user", value_name = "USER_ID")]
    user_id: Option<String>,
    /// Only credentials of this identity provider.
    #[arg(long, value_name = "PROVIDER")]
    provider: Option<String>,
    /// Only credentials in this state.
    #[arg(long, value_enum)]
    state: Option<ListedState>,
    /// Only credentials whose refresh token is still valid and expires within this span:
    /// a whole number with s, m, h or d (7d, 12h).
    #[arg(long, value_name = "SPAN", value_parser = parse_span)]
    expiring: Option<i64>,
    /// A JSON array, one object per line (fields: id, user_id, provider, state, generation, key_id,
    /// rt_expires_at, updated_at, lease_owner, lease_expires_at; times in Unix seconds).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
enum ListedState {
    Active,
    NeedsRedelegation,
    /// Sealed under a key the keyring does not hold.
    Undecryptable,
}

pub(super) async fn run(store: &Store, args: &ListArgs) -> Result<(), TokensError> {
    let now = unix_now();
    let filter = CredentialFilter {
        user_id: args.user_id.clone(),
        provider: args.provider.clone(),
        state: match args.state {
            Some(ListedState::Active) => Some(CredentialState::Active.as_str().to_owned()),
            Some(ListedState::NeedsRedelegation) => {
                Some(CredentialState::NeedsRedelegation.as_str().to_owned())
            }
            Some(ListedState::Undecryptable) | None => None,
        },
        rt_expires_within: args.expiring.map(|span| (now, now.saturating_add(span))),
    };
    let mut records: Vec<(&CredentialRecord, &str)> = Vec::new();
    let all = store.credentials(&filter).await?;
    for record in &all {
        let state = listed_state(record, &store.keyring);
        let wanted = match args.state {
            None => true,
            Some(ListedState::Undecryptable) => state == UNDECRYPTABLE,
            // The stored state matched in the database; a row sealed under a missing key is
            // listed as undecryptable instead.
            Some(_) => state != UNDECRYPTABLE,
        };
        if wanted {
            records.push((record, state));
        }
    }
    records.sort_by(|(a, _), (b, _)| (&a.user_id, &a.provider).cmp(&(&b.user_id, &b.provider)));

    let mut out = std::io::stdout().lock();
    if args.json {
        // One object per line, written as it goes: a listing of every credential holds no
        // second copy of them.
        write!(out, "[")?;
        for (i, (record, state)) in records.iter().enumerate() {
            let separator = if i == 0 { "\n" } else { ",\n" };
            write!(out, "{separator}{}", as_json(record, state))?;
        }
        writeln!(out, "\n]")?;
    } else {
        write_table(&mut out, &records, now)?;
    }
    out.flush()?;
    let undecryptable = records
        .iter()
        .filter(|(_, state)| *state == UNDECRYPTABLE)
        .count();
    let mut summary = match records.len() {
        1 => "1 stored credential listed".to_owned(),
        n => format!("{n} stored credentials listed"),
    };
    if undecryptable > 0 {
        summary.push_str(&format!(
            "; {undecryptable} sealed under a key the keyring {} lacks (`tokens verify` checks \
             every row)",
            store.keyring_path.display()
        ));
    }
    eprintln!("{summary}");
    Ok(())
}

fn as_json(record: &CredentialRecord, state: &str) -> Value {
    json!({
        "id": record.id,
        "user_id": record.user_id,
        "provider": record.provider,
        "state": state,
        "generation": record.generation,
        "key_id": record.key_id,
        "rt_expires_at": record.rt_expires_at,
        "updated_at": record.updated_at,
        "lease_owner": record.lease_owner,
        "lease_expires_at": record.lease_expires_at,
    })
}

fn write_table(
    out: &mut impl Write,
    records: &[(&CredentialRecord, &str)],
    now: i64,
) -> std::io::Result<()> {
    const HEADER: [&str; 8] = [
        "USER_ID",
        "PROVIDER",
        "STATE",
        "GENERATION",
        "KEY_ID",
        "RT_EXPIRES",
        "UPDATED",
        "LEASE",
    ];
    let rows: Vec<[String; 8]> = records
        .iter()
        .map(|(record, state)| {
            [
                record.user_id.clone(),
                record.provider.clone(),
                (*state).to_owned(),
                record.generation.to_string(),
                record.key_id.clone(),
                when(record.rt_expires_at),
                when(record.updated_at),
                lease(record, now),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: [&str; 8]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(HEADER)?;
    for row in &rows {
        line(row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

/// The refresh lease's holder, if one is recorded; `(expired)` when it lapsed (its holder died
/// or gave up, and any replica may take it).
fn lease(record: &CredentialRecord, now: i64) -> String {
    match (&record.lease_owner, record.lease_expires_at) {
        (Some(owner), Some(until)) if until >= now => owner.clone(),
        (Some(owner), _) => format!("{owner} (expired)"),
        (None, _) => "-".into(),
    }
}
