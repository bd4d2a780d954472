use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::Secret;

/// The longest user ID or provider name a row can hold (both are VARCHAR(255) on every backend).
pub const MAX_NAME_CHARS: usize = 255;
/// The longest token value accepted for storage. Real IdP tokens are a few KiB at most; the bound
/// keeps an encrypted value inside MySQL's 64 KiB BLOB.
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a stored credential can still be used to obtain access tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialState {
    Active,
    /// The IdP refused the refresh token (`invalid_grant`): only a new login (updateToken) helps.
    NeedsRedelegation,
}

impl CredentialState {
    pub const ALL: [Self; 2] = [Self::Active, Self::NeedsRedelegation];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsRedelegation => "needs_redelegation",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "needs_redelegation" => Some(Self::NeedsRedelegation),
            _ => None,
        }
    }
}

/// Why a token dictionary cannot be stored. The first two messages are DIRAC's own, word for word,
/// because DIRAC clients and operators know them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenDictError {
    #[error("Cannot store token without a refresh token.")]
    NoRefreshToken,
    #[error("Cannot store expired refresh token.")]
    ExpiredRefreshToken,
    #[error("{0} must not be empty")]
    EmptyName(&'static str),
    #[error("{what} is longer than {max} characters")]
    NameTooLong { what: &'static str, max: usize },
    #[error("token field '{field}' must be {expected}")]
    BadField {
        field: &'static str,
        expected: &'static str,
    },
    #[error("token field '{field}' is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
}

/// A token dictionary as DIRAC's `updateToken` receives it (an IdP token response, possibly with
/// DIRAC's own `rt_expires_at`), validated and normalised for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub user_id: String,
    pub provider: String,
    pub refresh_token: Secret,
    pub rt_expires_at: i64,
    pub access_token: Option<Secret>,
    pub expires_at: i64,
    pub expires_in: i64,
    pub token_type: Option<String>,
    pub scope: String,
    pub client_id: Option<String>,
    pub issued_at: i64,
}

impl NewToken {
    /// DIRAC's `TokenDB.updateToken` rules (docs/DIRAC.md#storing-a-token), minus its bugs: a
    /// present but falsy `rt_expires_at` counts as absent (DIRAC then stores 0 or raises), and
    /// values that DIRAC stringified (`"3600"`, `"None"`) are read back as what they were.
    pub fn from_dirac_dict(
        dict: &Map<String, Value>,
        user_id: &str,
        provider: &str,
        rt_expired_in: i64,
        now: i64,
    ) -> Result<Self, TokenDictError> {
        let user_id = checked_name("userID", user_id)?;
        let provider = checked_name("provider", provider)?;
        let refresh_token = match optional_text(dict, "refresh_token")? {
            Some(token) => checked_token("refresh_token", token)?,
            None => return Err(TokenDictError::NoRefreshToken),
        };
        let access_token = optional_text(dict, "access_token")?
            .map(|token| checked_token("access_token", token))
            .transpose()?;
        let issued_at = optional_int(dict, "issued_at")?.unwrap_or(now);
        let expires_in = optional_int(dict, "expires_in")?.unwrap_or(0);

        let rt_expires_at = optional_int(dict, "rt_expires_at")?
            .or_else(|| jwt_expiry(refresh_token.expose()))
            .unwrap_or(now + rt_expired_in);
        if rt_expires_at < now {
            return Err(TokenDictError::ExpiredRefreshToken);
        }
        let expires_at = optional_int(dict, "expires_at")?
            .or_else(|| (expires_in > 0).then_some(issued_at + expires_in))
            .or_else(|| access_token.as_ref().and_then(|t| jwt_expiry(t.expose())))
            .unwrap_or(0);

        Ok(Self {
            user_id,
            provider,
            refresh_token,
            rt_expires_at,
            access_token,
            expires_at,
            expires_in,
            token_type: optional_text(dict, "token_type")?,
            scope: normalise_scope(dict.get("scope"))?,
            client_id: optional_text(dict, "client_id")?,
            issued_at,
        })
    }
}

fn checked_name(what: &'static str, name: &str) -> Result<String, TokenDictError> {
    if name.trim().is_empty() {
        return Err(TokenDictError::EmptyName(what));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(TokenDictError::NameTooLong {
            what,
            max: MAX_NAME_CHARS,
        });
    }
    Ok(name.to_owned())
}

fn checked_token(field: &'static str, token: String) -> Result<Secret, TokenDictError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenDictError::TooLong {
            field,
            max: MAX_TOKEN_BYTES,
        });
    }
    Ok(Secret::new(token))
}

/// DIRAC writes SQL NULL as the string "None" when it stringifies rows; both mean "absent".
fn is_falsy(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty() || s == "None",
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn optional_text(
    dict: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, TokenDictError> {
    match dict.get(field) {
        None => Ok(None),
        Some(v) if is_falsy(v) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenDictError::BadField {
            field,
            expected: "a string",
        }),
    }
}

fn optional_int(
    dict: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<i64>, TokenDictError> {
    let bad = TokenDictError::BadField {
        field,
        expected: "an integer",
    };
    match dict.get(field) {
        None => Ok(None),
        Some(v) if is_falsy(v) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(bad),
        Some(Value::String(s)) => s.trim().parse::<i64>().map(Some).map_err(|_| bad),
        Some(_) => Err(bad),
    }
}

/// OAuth2 scopes are a set: stored without duplicates, space-separated, in the order given (DIRAC
/// stores the string as is and its clients read it back). DIRAC callers send either a
/// space-separated string (IdP responses) or a list.
fn normalise_scope(value: Option<&Value>) -> Result<String, TokenDictError> {
    let bad = TokenDictError::BadField {
        field: "scope",
        expected: "a string or a list of strings",
    };
    let scopes: Vec<&str> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(items)) => {
            let mut scopes = Vec::with_capacity(items.len());
            for item in items {
                scopes.extend(item.as_str().ok_or(bad.clone())?.split_whitespace());
            }
            scopes
        }
        Some(_) => return Err(bad),
    };
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&str> = scopes.into_iter().filter(|s| seen.insert(*s)).collect();
    Ok(unique.join(" "))
}

/// The `exp` claim of a JWT, read without verifying anything: DIRAC does the same to learn a
/// refresh token's lifetime. Opaque tokens and unsigned IAM refresh tokens without `exp` give None.
pub fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn dict(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn jwt_with_exp(exp: i64) -> String {
        let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"x","exp":{exp}}}"#));
        format!("eyJhbGciOiJub25lIn0.{payload}.")
    }

    fn parse(value: Value) -> Result<NewToken, TokenDictError> {
        NewToken::from_dirac_dict(&dict(value), "sub-1", "IAM", 86_400, NOW)
    }

    #[test]
    fn missing_or_empty_refresh_token_gets_diracs_message() {
        for value in [json!({"access_token": "a"}), json!({"refresh_token": ""})] {
            let err = parse(value).unwrap_err();
            assert_eq!(
                err.to_string(),
                "Cannot store token without a refresh token."
            );
        }
    }

    #[test]
    fn expired_refresh_token_gets_diracs_message() {
        let err = parse(json!({"refresh_token": "r", "rt_expires_at": NOW - 1})).unwrap_err();
        assert_eq!(err.to_string(), "Cannot store expired refresh token.");
        let err = parse(json!({"refresh_token": jwt_with_exp(NOW - 10)})).unwrap_err();
        assert_eq!(err, TokenDictError::ExpiredRefreshToken);
    }

    #[test]
    fn refresh_expiry_comes_from_the_dict_then_the_jwt_then_the_default() {
        let explicit = parse(json!({"refresh_token": "r", "rt_expires_at": "1800000500"}));
        assert_eq!(explicit.unwrap().rt_expires_at, 1_800_000_500);
        let from_jwt = parse(json!({"refresh_token": jwt_with_exp(NOW + 77)}));
        assert_eq!(from_jwt.unwrap().rt_expires_at, NOW + 77);
        let default = parse(json!({"refresh_token": "opaque"}));
        assert_eq!(default.unwrap().rt_expires_at, NOW + 86_400);
    }

    #[test]
    fn falsy_rt_expires_at_counts_as_absent_unlike_dirac() {
        for falsy in [json!(0), json!(null), json!(""), json!("None")] {
            let token = parse(json!({"refresh_token": "r", "rt_expires_at": falsy})).unwrap();
            assert_eq!(token.rt_expires_at, NOW + 86_400);
        }
    }

    #[test]
    fn access_expiry_from_expires_at_then_expires_in_then_jwt() {
        let t = parse(json!({"refresh_token": "r", "expires_at": 1_800_000_100_i64})).unwrap();
        assert_eq!(t.expires_at, 1_800_000_100);
        let t = parse(json!({"refresh_token": "r", "expires_in": "3600"})).unwrap();
        assert_eq!((t.expires_at, t.expires_in), (NOW + 3600, 3600));
        let t = parse(json!({"refresh_token": "r", "access_token": jwt_with_exp(NOW + 5)}));
        assert_eq!(t.unwrap().expires_at, NOW + 5);
        let t = parse(json!({"refresh_token": "r", "access_token": "opaque"})).unwrap();
        assert_eq!(t.expires_at, 0);
    }

    #[test]
    fn scope_is_a_normalised_set_from_a_string_or_a_list() {
        let t = parse(json!({"refresh_token": "r", "scope": "openid  profile openid"})).unwrap();
        assert_eq!(t.scope, "openid profile");
        let t = parse(json!({"refresh_token": "r", "scope": ["b", "a c", "a"]})).unwrap();
        assert_eq!(t.scope, "b a c");
        assert!(parse(json!({"refresh_token": "r", "scope": 7})).is_err());
    }

    #[test]
    fn wrongly_typed_fields_are_refused_by_name() {
        let err = parse(json!({"refresh_token": "r", "expires_in": "soon"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "token field 'expires_in' must be an integer"
        );
        let err = parse(json!({"refresh_token": 42})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "token field 'refresh_token' must be a string"
        );
    }

    #[test]
    fn names_and_token_sizes_are_bounded() {
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let token = dict(json!({"refresh_token": "r"}));
        assert!(NewToken::from_dirac_dict(&token, &long, "IAM", 60, NOW).is_err());
        assert!(NewToken::from_dirac_dict(&token, " ", "IAM", 60, NOW).is_err());
        assert!(NewToken::from_dirac_dict(&token, "u", "", 60, NOW).is_err());
        let huge = parse(json!({"refresh_token": "r".repeat(MAX_TOKEN_BYTES + 1)}));
        assert!(matches!(huge, Err(TokenDictError::TooLong { .. })));
    }

    #[test]
    fn errors_never_contain_the_token() {
        let err = parse(json!({"refresh_token": "r-secret", "rt_expires_at": "x"})).unwrap_err();
        assert!(!err.to_string().contains("r-secret"));
        let token = parse(json!({"refresh_token": "r-secret"})).unwrap();
        assert!(!format!("{token:?}").contains("r-secret"));
    }
}
