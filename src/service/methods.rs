//! The method table: names, hard-coded authorization rules and parameters, shared by every
//! protocol front-end (and by the OpenAPI document).

use serde_json::{Map, Value};

use super::args::{
    Arguments, DEFAULT_AUDIT_LIMIT, DEFAULT_REFRESH_LIFETIME, DEFAULT_REQUIRED_TIME_LEFT,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    GetToken,
    Ping,
    Echo,
    Whoami,
    UpdateToken,
    DeleteToken,
    GetTokensByUserId,
    GetUserTokensInfo,
    GetUsersTokensInfo,
    RefreshConfiguration,
    GetTokenAudit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Any,
    Str,
    Int,
    Bool,
    Dict,
    /// A list of strings.
    StrList,
    /// A string or null.
    OptStr,
    /// Scopes: a list of strings, one space-separated string, or null.
    Scopes,
}

impl ParamKind {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Self::Any => true,
            Self::Str => value.is_string(),
            // Python: isinstance(True, int) holds, and DIRAC clients may send 3600.0.
            Self::Int => value.is_i64() || value.is_u64() || value.is_boolean(),
            Self::Bool => value.is_boolean(),
            Self::Dict => value.is_object(),
            Self::StrList => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
            Self::OptStr => value.is_string() || value.is_null(),
            Self::Scopes => Self::StrList.accepts(value) || Self::OptStr.accepts(value),
        }
    }

    /// Python's repr of the expected type, as DIRAC's argument-check messages print it.
    fn python_type(self) -> &'static str {
        match self {
            Self::Any => "<class 'object'>",
            Self::Str => "<class 'str'>",
            Self::Int => "<class 'int'>",
            Self::Bool => "<class 'bool'>",
            Self::Dict => "<class 'dict'>",
            Self::StrList | Self::Scopes => "<class 'list'>",
            Self::OptStr => "<class 'str'>",
        }
    }

    /// For JSON API messages and the OpenAPI document.
    pub fn json_type(self) -> &'static str {
        match self {
            Self::Any => "any JSON value",
            Self::Str => "a string",
            Self::Int => "an integer",
            Self::Bool => "a boolean",
            Self::Dict => "an object",
            Self::StrList => "a list of strings",
            Self::OptStr => "a string or null",
            Self::Scopes => "a list of scopes, a space-separated string or null",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub kind: ParamKind,
    /// Optional parameters take DIRAC's default when absent.
    pub default: Option<fn() -> Value>,
    pub description: &'static str,
}

const fn required(name: &'static str, kind: ParamKind, description: &'static str) -> Param {
    Param {
        name,
        kind,
        default: None,
        description,
    }
}

const GET_TOKEN: &[Param] = &[
    optional(
        "username",
        ParamKind::OptStr,
        "the user whose token is wanted; null for a client token",
    ),
    optional(
        "userGroup",
        ParamKind::OptStr,
        "the DIRAC group: its VO's IdP and its IdPRole scopes",
    ),
    optional("scope", ParamKind::Scopes, "scopes added to the group's"),
    optional(
        "audience",
        ParamKind::OptStr,
        "the audience of the access token",
    ),
    optional(
        "identityProvider",
        ParamKind::OptStr,
        "the IdP (default: the group's VO's)",
    ),
    Param {
        name: "requiredTimeLeft",
        kind: ParamKind::Int,
        default: Some(default_required_time_left),
        description: "seconds the returned access token must still live",
    },
];
const ECHO: &[Param] = &[required("data", ParamKind::Any, "anything")];
const UPDATE_TOKEN: &[Param] = &[
    required(
        "token",
        ParamKind::Dict,
        "the IdP token response; needs refresh_token",
    ),
    required("userID", ParamKind::Str, "the IdP user ID (subject)"),
    required(
        "provider",
        ParamKind::Str,
        "the IdP name, a /Resources/IdProviders section",
    ),
    Param {
        name: "rt_expired_in",
        kind: ParamKind::Int,
        default: Some(default_refresh_lifetime),
        description: "refresh-token lifetime in seconds when the token does not say",
    },
];
const DELETE_TOKEN: &[Param] = &[required(
    "userDN",
    ParamKind::Str,
    "the user ID whose tokens are deleted",
)];
const GET_TOKENS_BY_USER_ID: &[Param] = &[required("userID", ParamKind::Str, "the IdP user ID")];
const GET_USERS_TOKENS_INFO: &[Param] =
    &[required("users", ParamKind::StrList, "DIRAC user names")];
const GET_TOKEN_AUDIT: &[Param] = &[
    optional(
        "user",
        ParamKind::OptStr,
        "a DIRAC user name: the records of that user's tokens and credentials; null: everyone's \
         (callers with ProxyManagement), else the caller's own",
    ),
    optional(
        "provider",
        ParamKind::OptStr,
        "only the records of this IdP",
    ),
    Param {
        name: "since",
        kind: ParamKind::Int,
        default: Some(default_zero),
        description: "Unix time: only records whose last time is at or after it (0: all)",
    },
    Param {
        name: "limit",
        kind: ParamKind::Int,
        default: Some(default_audit_limit),
        description: "at most this many records, newest first (1 to 10,000)",
    },
];
const REFRESH_CONFIGURATION: &[Param] = &[Param {
    name: "fromMaster",
    kind: ParamKind::Bool,
    default: Some(default_false),
    description: "ask the master Configuration Server (local files are re-read either way)",
}];

const fn optional(name: &'static str, kind: ParamKind, description: &'static str) -> Param {
    Param {
        name,
        kind,
        default: Some(default_null),
        description,
    }
}

fn default_null() -> Value {
    Value::Null
}

fn default_required_time_left() -> Value {
    Value::from(DEFAULT_REQUIRED_TIME_LEFT)
}

fn default_refresh_lifetime() -> Value {
    Value::from(DEFAULT_REFRESH_LIFETIME)
}

fn default_zero() -> Value {
    Value::from(0)
}

fn default_audit_limit() -> Value {
    Value::from(DEFAULT_AUDIT_LIMIT)
}

fn default_false() -> Value {
    Value::Bool(false)
}

impl Method {
    pub const ALL: [Method; 11] = [
        Self::GetToken,
        Self::Ping,
        Self::Echo,
        Self::Whoami,
        Self::UpdateToken,
        Self::DeleteToken,
        Self::GetTokensByUserId,
        Self::GetUserTokensInfo,
        Self::GetUsersTokensInfo,
        Self::RefreshConfiguration,
        Self::GetTokenAudit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::GetToken => "getToken",
            Self::Ping => "ping",
            Self::Echo => "echo",
            Self::Whoami => "whoami",
            Self::UpdateToken => "updateToken",
            Self::DeleteToken => "deleteToken",
            Self::GetTokensByUserId => "getTokensByUserID",
            Self::GetUserTokensInfo => "getUserTokensInfo",
            Self::GetUsersTokensInfo => "getUsersTokensInfo",
            Self::RefreshConfiguration => "refreshConfiguration",
            Self::GetTokenAudit => "getTokenAudit",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The rule DIRAC's handler hard-codes (the seed's `auth_<method>`), used when the
    /// Authorization section says nothing of the method.
    pub fn hardcoded_rule(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Ping | Self::Whoami => Some(&["all"]),
            Self::GetUsersTokensInfo => Some(&["ProxyManagement"]),
            Self::RefreshConfiguration => Some(&["CSAdministrator"]),
            Self::GetUserTokensInfo | Self::GetTokenAudit => Some(&["authenticated"]),
            _ => None,
        }
    }

    pub fn summary(self) -> &'static str {
        match self {
            Self::GetToken => {
                "An access token for a user (refreshing the stored token) or for DIRAC itself (client credentials)"
            }
            Self::Ping => "Service version, time, uptimes and load",
            Self::Echo => "Returns its argument",
            Self::Whoami => "The caller's credentials as the service sees them",
            Self::UpdateToken => {
                "Stores a user's token for an IdP, replacing the previous one; returns the user's token info"
            }
            Self::DeleteToken => "Deletes every stored token of a user ID",
            Self::GetTokensByUserId => "Token info of a user ID",
            Self::GetUserTokensInfo => "Token info of the caller",
            Self::GetUsersTokensInfo => "Token info of the listed users",
            Self::RefreshConfiguration => "Re-reads the configuration files",
            Self::GetTokenAudit => {
                "The audit trail: token handouts and credential changes, newest first"
            }
        }
    }

    /// The parameters, in DIRAC's positional order.
    pub fn params(self) -> &'static [Param] {
        match self {
            Self::Ping | Self::Whoami | Self::GetUserTokensInfo => &[],
            Self::GetToken => GET_TOKEN,
            Self::Echo => ECHO,
            Self::UpdateToken => UPDATE_TOKEN,
            Self::DeleteToken => DELETE_TOKEN,
            Self::GetTokensByUserId => GET_TOKENS_BY_USER_ID,
            Self::GetUsersTokensInfo => GET_USERS_TOKENS_INFO,
            Self::RefreshConfiguration => REFRESH_CONFIGURATION,
            Self::GetTokenAudit => GET_TOKEN_AUDIT,
        }
    }

    /// DIRAC's positional arguments (DIRAC's HTTPS and DISET protocols), decoded; the error is
    /// DIRAC's message for arguments it would refuse.
    pub fn positional(self, args: Vec<Value>) -> Result<Arguments, String> {
        let values = self.positional_args(args)?;
        Ok(Arguments::from_checked(self, values))
    }

    /// Named arguments (JSON API), decoded; unknown names are refused.
    pub fn named(self, named: Map<String, Value>) -> Result<Arguments, String> {
        let values = self.named_args(named)?;
        Ok(Arguments::from_checked(self, values))
    }

    /// DIRAC's positional argument check (docs/DIRAC.md#disets-argument-check): types of the
    /// arguments given, then their number; extra arguments are allowed. Lenient where DIRAC's own
    /// lists are buggy: `updateToken` takes 3 or 4 arguments and `getUserTokensInfo` ignores a
    /// stray list.
    fn positional_args(self, mut args: Vec<Value>) -> Result<Vec<Value>, String> {
        let params = self.params();
        for (index, (param, arg)) in params.iter().zip(&args).enumerate() {
            if !param.kind.accepts(arg) {
                return Err(format!(
                    "Type mismatch in parameter {index} (starting with param 0) Received {}, expected {}",
                    python_type_of(arg),
                    param.kind.python_type()
                ));
            }
        }
        let needed = params.iter().filter(|p| p.default.is_none()).count();
        if args.len() < needed {
            return Err(format!(
                "Function {} expects at least {needed} arguments",
                self.name()
            ));
        }
        for param in &params[args.len().min(params.len())..] {
            args.push(
                param
                    .default
                    .map(|default| default())
                    .unwrap_or(Value::Null),
            );
        }
        Ok(args)
    }

    /// Named arguments in positional order; unknown names are refused.
    fn named_args(self, mut named: Map<String, Value>) -> Result<Vec<Value>, String> {
        let params = self.params();
        if let Some(unknown) = named
            .keys()
            .find(|k| !params.iter().any(|p| p.name == k.as_str()))
        {
            return Err(format!("{} takes no argument '{unknown}'", self.name()));
        }
        params
            .iter()
            .map(|param| match named.remove(param.name) {
                Some(value) if param.kind.accepts(&value) => Ok(value),
                Some(_) => Err(format!(
                    "argument '{}' must be {}",
                    param.name,
                    param.kind.json_type()
                )),
                None => param
                    .default
                    .map(|default| default())
                    .ok_or_else(|| format!("missing argument '{}'", param.name)),
            })
            .collect()
    }
}

fn python_type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "<class 'NoneType'>",
        Value::Bool(_) => "<class 'bool'>",
        Value::Number(n) if n.is_f64() => "<class 'float'>",
        Value::Number(_) => "<class 'int'>",
        Value::String(_) => "<class 'str'>",
        Value::Array(_) => "<class 'list'>",
        Value::Object(_) => "<class 'dict'>",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip() {
        for method in Method::ALL {
            assert_eq!(Method::from_name(method.name()), Some(method));
        }
        assert_eq!(Method::from_name("getToken2"), None);
    }

    #[test]
    fn positional_checks_give_diracs_messages() {
        let err = Method::DeleteToken
            .positional_args(vec![json!(5)])
            .unwrap_err();
        assert_eq!(
            err,
            "Type mismatch in parameter 0 (starting with param 0) Received <class 'int'>, expected <class 'str'>"
        );
        let err = Method::UpdateToken
            .positional_args(vec![json!({}), json!("u")])
            .unwrap_err();
        assert_eq!(err, "Function updateToken expects at least 3 arguments");
        let err = Method::GetUsersTokensInfo
            .positional_args(vec![json!("alice")])
            .unwrap_err();
        assert!(
            err.contains("Received <class 'str'>, expected <class 'list'>"),
            "{err}"
        );
    }

    #[test]
    fn positional_leniency_where_dirac_is_buggy() {
        let args = Method::UpdateToken
            .positional_args(vec![
                json!({"refresh_token": "r"}),
                json!("u"),
                json!("IAM"),
            ])
            .unwrap();
        assert_eq!(
            args[3],
            json!(86_400),
            "3 arguments, as DIRAC's AuthServer sends"
        );
        let args = Method::GetUserTokensInfo
            .positional_args(vec![json!([])])
            .unwrap();
        assert_eq!(args, [json!([])], "a stray list is ignored");
        let args = Method::RefreshConfiguration
            .positional_args(vec![])
            .unwrap();
        assert_eq!(args, [json!(false)]);
    }

    #[test]
    fn the_three_protocols_decode_into_the_same_struct() {
        let positional = Method::GetToken
            .positional(vec![json!("alice"), json!(""), json!("a b")])
            .unwrap();
        let named = Method::GetToken
            .named(
                json!({"username": "alice", "scope": ["a", "b"]})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
        for decoded in [positional, named] {
            let Arguments::GetToken(args) = decoded else {
                panic!("getToken's arguments")
            };
            assert_eq!(args.username.as_deref(), Some("alice"));
            assert_eq!(args.group, None, "an empty group is no group, as in DIRAC");
            assert_eq!(args.scopes.to_string(), "a b");
            assert_eq!(args.required_time_left, 0, "DIRAC's default");
        }
        let Arguments::UpdateToken(args) = Method::UpdateToken
            .positional(vec![
                json!({"refresh_token": "r"}),
                json!("u"),
                json!("IAM"),
            ])
            .unwrap()
        else {
            panic!("updateToken's arguments")
        };
        assert_eq!(
            (
                args.user_id.as_str(),
                args.provider.as_str(),
                args.refresh_lifetime
            ),
            ("u", "IAM", 86_400)
        );
        let Arguments::GetToken(args) = Method::GetToken
            .positional(vec![
                json!(null),
                json!(null),
                json!(null),
                json!(null),
                json!(null),
                json!(-5),
            ])
            .unwrap()
        else {
            panic!("getToken's arguments")
        };
        assert_eq!(args.required_time_left, 0, "never negative");
    }

    #[test]
    fn named_args_are_checked_by_name() {
        let named = |v: Value| v.as_object().unwrap().clone();
        let args = Method::GetTokensByUserId
            .named_args(named(json!({"userID": "u"})))
            .unwrap();
        assert_eq!(args, [json!("u")]);
        let err = Method::GetTokensByUserId
            .named_args(named(json!({"userId": "u"})))
            .unwrap_err();
        assert_eq!(err, "getTokensByUserID takes no argument 'userId'");
        let err = Method::GetTokensByUserId
            .named_args(named(json!({})))
            .unwrap_err();
        assert_eq!(err, "missing argument 'userID'");
        let err = Method::GetUsersTokensInfo
            .named_args(named(json!({"users": [1]})))
            .unwrap_err();
        assert_eq!(err, "argument 'users' must be a list of strings");
    }
}
