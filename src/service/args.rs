//! Each method's arguments as one typed struct, decoded once from what a protocol sent: JSON
//! named arguments ([`Method::named`]) or DIRAC's positional list ([`Method::positional`]), both
//! checked against the method table first, so decoding here cannot fail.

use serde_json::{Map, Value};

use super::Method;
use crate::domain::scopes::ScopeSet;

/// A method and its decoded arguments.
#[derive(Debug)]
pub enum Arguments {
    GetToken(GetTokenArgs),
    Ping,
    Echo(EchoArgs),
    Whoami,
    UpdateToken(UpdateTokenArgs),
    DeleteToken(DeleteTokenArgs),
    GetTokensByUserId(GetTokensByUserIdArgs),
    GetUserTokensInfo,
    GetUsersTokensInfo(GetUsersTokensInfoArgs),
    RefreshConfiguration(RefreshConfigurationArgs),
    GetTokenAudit(GetTokenAuditArgs),
}

#[derive(Debug)]
pub struct GetTokenArgs {
    /// None (null or empty) asks for a client token.
    pub username: Option<String>,
    pub group: Option<String>,
    pub scopes: ScopeSet,
    pub audience: Option<String>,
    pub provider: Option<String>,
    /// Never negative.
    pub required_time_left: i64,
}

#[derive(Debug)]
pub struct EchoArgs {
    pub data: Value,
}

pub struct UpdateTokenArgs {
    pub token: Map<String, Value>,
    pub user_id: String,
    pub provider: String,
    /// `rt_expired_in`: the refresh token's lifetime when the token does not say.
    pub refresh_lifetime: i64,
}

#[derive(Debug)]
pub struct DeleteTokenArgs {
    /// DIRAC calls it `userDN`; it is a user ID.
    pub user_id: String,
}

#[derive(Debug)]
pub struct GetTokensByUserIdArgs {
    pub user_id: String,
}

#[derive(Debug)]
pub struct GetUsersTokensInfoArgs {
    pub users: Vec<String>,
}

#[derive(Debug)]
pub struct RefreshConfigurationArgs {
    pub from_master: bool,
}

#[derive(Debug)]
pub struct GetTokenAuditArgs {
    pub user: Option<String>,
    pub provider: Option<String>,
    pub since: i64,
    /// Within 1..=[`MAX_AUDIT_LIMIT`].
    pub limit: i64,
}

/// The token dictionary holds a refresh token: its debug output names the fields only.
impl std::fmt::Debug for UpdateTokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateTokenArgs")
            .field("token_fields", &self.token.keys().collect::<Vec<_>>())
            .field("user_id", &self.user_id)
            .field("provider", &self.provider)
            .field("refresh_lifetime", &self.refresh_lifetime)
            .finish()
    }
}

/// The Authorization options that say who may act on another user's ID (default:
/// ProxyManagement).
impl UpdateTokenArgs {
    pub const OTHER_USERS_RULE: &str = "updateTokenForOtherUsers";
}

impl DeleteTokenArgs {
    pub const OTHER_USERS_RULE: &str = "deleteTokenForOtherUsers";
}

impl GetTokensByUserIdArgs {
    pub const OTHER_USERS_RULE: &str = "getTokensByUserIDForOtherUsers";
}

impl GetTokenAuditArgs {
    pub const OTHER_USERS_RULE: &str = "getTokenAuditForOtherUsers";
}

/// DIRAC's `requiredTimeLeft` default.
pub(super) const DEFAULT_REQUIRED_TIME_LEFT: i64 = 0;
/// getTokenAudit's default and largest `limit`.
pub(super) const DEFAULT_AUDIT_LIMIT: i64 = 1000;
pub(super) const MAX_AUDIT_LIMIT: i64 = 10_000;
/// DIRAC's `rt_expired_in` default: one day.
pub(super) const DEFAULT_REFRESH_LIFETIME: i64 = 86_400;

impl Arguments {
    /// From the values of `method`'s parameters, in positional order, each present (defaults
    /// filled in) and of its parameter's kind: [`Method::positional`] and [`Method::named`]
    /// checked them.
    pub(super) fn from_checked(method: Method, values: Vec<Value>) -> Self {
        let mut values = Checked(values.into_iter());
        match method {
            Method::GetToken => Self::GetToken(GetTokenArgs {
                username: values.optional_text(),
                group: values.optional_text(),
                scopes: values.scopes(),
                audience: values.optional_text(),
                provider: values.optional_text(),
                required_time_left: values.int(DEFAULT_REQUIRED_TIME_LEFT).max(0),
            }),
            Method::Ping => Self::Ping,
            Method::Echo => Self::Echo(EchoArgs { data: values.any() }),
            Method::Whoami => Self::Whoami,
            Method::UpdateToken => Self::UpdateToken(UpdateTokenArgs {
                token: values.dict(),
                user_id: values.text(),
                provider: values.text(),
                refresh_lifetime: values.int(DEFAULT_REFRESH_LIFETIME),
            }),
            Method::DeleteToken => Self::DeleteToken(DeleteTokenArgs {
                user_id: values.text(),
            }),
            Method::GetTokensByUserId => Self::GetTokensByUserId(GetTokensByUserIdArgs {
                user_id: values.text(),
            }),
            Method::GetUserTokensInfo => Self::GetUserTokensInfo,
            Method::GetUsersTokensInfo => Self::GetUsersTokensInfo(GetUsersTokensInfoArgs {
                users: values.text_list(),
            }),
            Method::GetTokenAudit => Self::GetTokenAudit(GetTokenAuditArgs {
                user: values.optional_text(),
                provider: values.optional_text(),
                since: values.int(0),
                limit: values.int(DEFAULT_AUDIT_LIMIT).clamp(1, MAX_AUDIT_LIMIT),
            }),
            Method::RefreshConfiguration => Self::RefreshConfiguration(RefreshConfigurationArgs {
                from_master: values.flag(),
            }),
        }
    }

    pub fn method(&self) -> Method {
        match self {
            Self::GetToken(_) => Method::GetToken,
            Self::Ping => Method::Ping,
            Self::Echo(_) => Method::Echo,
            Self::Whoami => Method::Whoami,
            Self::UpdateToken(_) => Method::UpdateToken,
            Self::DeleteToken(_) => Method::DeleteToken,
            Self::GetTokensByUserId(_) => Method::GetTokensByUserId,
            Self::GetUserTokensInfo => Method::GetUserTokensInfo,
            Self::GetUsersTokensInfo(_) => Method::GetUsersTokensInfo,
            Self::RefreshConfiguration(_) => Method::RefreshConfiguration,
            Self::GetTokenAudit(_) => Method::GetTokenAudit,
        }
    }
}

/// Checked values, read in parameter order. Each reader is total: a value of another shape
/// (which the check rules out) reads as the parameter's empty value rather than panicking.
struct Checked(std::vec::IntoIter<Value>);

impl Checked {
    fn any(&mut self) -> Value {
        self.0.next().unwrap_or(Value::Null)
    }

    /// A `Str` parameter.
    fn text(&mut self) -> String {
        match self.any() {
            Value::String(text) => text,
            _ => String::new(),
        }
    }

    /// An `OptStr` parameter: null and the empty string both mean "not given", as in DIRAC.
    fn optional_text(&mut self) -> Option<String> {
        match self.any() {
            Value::String(text) if !text.is_empty() => Some(text),
            _ => None,
        }
    }

    /// An `Int` parameter. A boolean (Python's `isinstance(True, int)` lets it through the
    /// check) and an integer beyond i64 take `default`.
    fn int(&mut self, default: i64) -> i64 {
        self.any().as_i64().unwrap_or(default)
    }

    /// A `Bool` parameter.
    fn flag(&mut self) -> bool {
        self.any().as_bool().unwrap_or_default()
    }

    /// A `Dict` parameter.
    fn dict(&mut self) -> Map<String, Value> {
        match self.any() {
            Value::Object(dict) => dict,
            _ => Map::new(),
        }
    }

    /// A `StrList` parameter.
    fn text_list(&mut self) -> Vec<String> {
        match self.any() {
            Value::Array(items) => items
                .into_iter()
                .filter_map(|item| match item {
                    Value::String(text) => Some(text),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A `Scopes` parameter: a list, one space-separated string, or null.
    fn scopes(&mut self) -> ScopeSet {
        match self.any() {
            Value::String(scopes) => ScopeSet::parse(&scopes),
            Value::Array(items) => ScopeSet::from_items(items.iter().filter_map(Value::as_str)),
            _ => ScopeSet::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn update_token_arguments_debug_without_the_token_values() {
        let args = Arguments::from_checked(
            Method::UpdateToken,
            vec![
                json!({"access_token": "at-secret", "refresh_token": "rt-secret"}),
                json!("alice"),
                json!("test-idp"),
                json!(3600),
            ],
        );
        let shown = format!("{args:?}");
        assert!(
            shown.contains("refresh_token") && shown.contains("alice"),
            "{shown}"
        );
        assert!(
            !shown.contains("rt-secret") && !shown.contains("at-secret"),
            "{shown}"
        );
    }
}
