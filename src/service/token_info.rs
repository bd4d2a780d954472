//! DIRAC's tokenInfo dictionaries (docs/DIRAC.md#token-info-dictionaries): every column as a string
//! except `expires_at`, which DIRAC's OAuth2Token turns into an int. Token values only when the
//! caller may see them.

use serde_json::{Map, Value, json};

use crate::db::StoredToken;
use crate::domain::Secret;

pub fn list(tokens: &[StoredToken], username: Option<&str>, expose_tokens: bool) -> Value {
    Value::Array(items(tokens, username, expose_tokens))
}

pub fn items(tokens: &[StoredToken], username: Option<&str>, expose_tokens: bool) -> Vec<Value> {
    tokens
        .iter()
        .map(|t| info(t, username, expose_tokens))
        .collect()
}

fn info(token: &StoredToken, username: Option<&str>, expose_tokens: bool) -> Value {
    // DIRAC stringifies NULL as "None".
    let text = |value: Option<&str>| json!(value.unwrap_or("None"));
    let mut dict = Map::new();
    dict.insert("id".into(), json!(token.id.to_string()));
    dict.insert("kid".into(), json!(token.key_id));
    dict.insert("user_id".into(), json!(token.user_id));
    dict.insert("provider".into(), json!(token.provider));
    dict.insert("expires_at".into(), json!(token.expires_at));
    if expose_tokens {
        dict.insert(
            "access_token".into(),
            text(token.access_token.as_ref().map(Secret::expose)),
        );
        dict.insert("refresh_token".into(), json!(token.refresh_token.expose()));
    }
    dict.insert(
        "rt_expires_at".into(),
        json!(token.rt_expires_at.to_string()),
    );
    dict.insert("client_id".into(), text(token.client_id.as_deref()));
    dict.insert("token_type".into(), text(token.token_type.as_deref()));
    dict.insert("scope".into(), json!(token.scope));
    dict.insert("issued_at".into(), json!(token.issued_at.to_string()));
    dict.insert(
        "access_token_revoked_at".into(),
        json!(token.access_token_revoked_at.to_string()),
    );
    dict.insert(
        "refresh_token_revoked_at".into(),
        json!(token.refresh_token_revoked_at.to_string()),
    );
    dict.insert("expires_in".into(), json!(token.expires_in.to_string()));
    dict.insert("state".into(), json!(token.state.as_str()));
    if let Some(username) = username {
        dict.insert("username".into(), json!(username));
    }
    Value::Object(dict)
}
