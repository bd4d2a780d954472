//! The API's error contract: every stable code with its HTTP status, what DIRAC clients receive
//! instead and what it means. The JSON replies, the OpenAPI document, the request metrics and
//! docs/API.md's error table all come from [`ErrorCode`], so they cannot disagree.

use actix_web::http::StatusCode;
use thiserror::Error;

use super::Method;
use crate::db::DbError;
use crate::domain::TokenDictError;
use crate::domain::policy::Denied;

/// A stable error code: the `code` of a JSON API error reply and the `outcome` label of a
/// refused request in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unauthenticated,
    InvalidBearerToken,
    Forbidden,
    MalformedJson,
    BadRequest,
    BadArgument,
    BodyTooLarge,
    RequestTimeout,
    UnknownMethod,
    MethodNotAllowed,
    NotFound,
    UnknownUser,
    UnknownProvider,
    InvalidToken,
    NoIdp,
    AudienceNotAllowed,
    ScopeNotGranted,
    NoToken,
    NeedsRedelegation,
    IdpRefused,
    IdpUnavailable,
    ConfigRejected,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 23] = [
        Self::Unauthenticated,
        Self::InvalidBearerToken,
        Self::Forbidden,
        Self::MalformedJson,
        Self::BadRequest,
        Self::BadArgument,
        Self::BodyTooLarge,
        Self::RequestTimeout,
        Self::UnknownMethod,
        Self::MethodNotAllowed,
        Self::NotFound,
        Self::UnknownUser,
        Self::UnknownProvider,
        Self::InvalidToken,
        Self::NoIdp,
        Self::AudienceNotAllowed,
        Self::ScopeNotGranted,
        Self::NoToken,
        Self::NeedsRedelegation,
        Self::IdpRefused,
        Self::IdpUnavailable,
        Self::ConfigRejected,
        Self::Internal,
    ];

    /// The refusals every installation meets: their request counters exist at 0 from the start.
    pub const COMMON: [ErrorCode; 4] = [
        Self::Unauthenticated,
        Self::Forbidden,
        Self::BadArgument,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidBearerToken => "invalid_bearer_token",
            Self::Forbidden => "forbidden",
            Self::MalformedJson => "malformed_json",
            Self::BadRequest => "bad_request",
            Self::BadArgument => "bad_argument",
            Self::BodyTooLarge => "body_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::UnknownMethod => "unknown_method",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotFound => "not_found",
            Self::UnknownUser => "unknown_user",
            Self::UnknownProvider => "unknown_provider",
            Self::InvalidToken => "invalid_token",
            Self::NoIdp => "no_idp",
            Self::AudienceNotAllowed => "audience_not_allowed",
            Self::ScopeNotGranted => "scope_not_granted",
            Self::NoToken => "no_token",
            Self::NeedsRedelegation => "needs_redelegation",
            Self::IdpRefused => "idp_refused",
            Self::IdpUnavailable => "idp_unavailable",
            Self::ConfigRejected => "config_rejected",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status of a JSON API reply with this code.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::Unauthenticated | Self::InvalidBearerToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::MalformedJson
            | Self::BadRequest
            | Self::BadArgument
            | Self::UnknownProvider
            | Self::InvalidToken
            | Self::NoIdp
            | Self::AudienceNotAllowed
            | Self::ScopeNotGranted => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnknownMethod | Self::NotFound | Self::UnknownUser | Self::NoToken => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NeedsRedelegation => StatusCode::CONFLICT,
            Self::IdpRefused | Self::IdpUnavailable => StatusCode::BAD_GATEWAY,
            Self::ConfigRejected | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What a client of DIRAC's protocols (HTTPS `/Framework/TokenManager`, DISET `dips://`)
    /// receives where the JSON API replies this code.
    pub fn dirac_reply(self) -> &'static str {
        match self {
            Self::Unauthenticated => "HTTPS: HTTP 401; DISET: no handshake without a certificate",
            Self::InvalidBearerToken => "HTTPS: HTTP 401",
            Self::Forbidden => {
                "a rule refuses: HTTPS: HTTP 401, DISET: `S_ERROR` errno 1111 \
                 `Unauthorized query ( 1111 : Unauthorized query)`; a method check refuses: \
                 `S_ERROR` with its message (`You aren't allowed!`)"
            }
            Self::MalformedJson | Self::BadRequest => {
                "HTTPS: HTTP 400 (no `method` field, malformed form); `S_ERROR` \
                 `Error in parameter check: …` for `args` that are not a JEncoded list"
            }
            Self::BadArgument => {
                "`S_ERROR` with DIRAC's argument check message (`Type mismatch in parameter 0 \
                 (starting with param 0) Received …, expected …`, `Function … expects at least … \
                 arguments`)"
            }
            Self::BodyTooLarge => "HTTPS: HTTP 413; DISET: the connection is closed",
            Self::RequestTimeout => "HTTPS: HTTP 408; DISET: the connection is closed",
            Self::UnknownMethod => "HTTPS: HTTP 501; DISET: `S_ERROR` `Unknown method <name>`",
            Self::MethodNotAllowed => "HTTPS: HTTP 405",
            Self::NotFound => "the same JSON reply",
            Self::UnknownUser => "`S_ERROR` `No DN found for user <name>`",
            Self::UnknownProvider => {
                "`S_ERROR` `Path /Resources/IdProviders/<name> does not exist or it's not a \
                 section`"
            }
            Self::InvalidToken => {
                "`S_ERROR` with DIRAC's message (`Cannot store token without a refresh token.`, \
                 `Cannot store expired refresh token.`)"
            }
            Self::NoIdp => {
                "`S_ERROR` `The <group> group belongs to the VO that is not tied to any Identity \
                 Provider.`"
            }
            Self::AudienceNotAllowed
            | Self::ScopeNotGranted
            | Self::NoToken
            | Self::NeedsRedelegation
            | Self::IdpRefused
            | Self::IdpUnavailable
            | Self::ConfigRejected
            | Self::Internal => "`S_ERROR` with the same message",
        }
    }

    /// One line for the docs and the OpenAPI document.
    pub fn description(self) -> &'static str {
        match self {
            Self::Unauthenticated => {
                "neither a client certificate nor a bearer token that verifies (the message says \
                 why a bearer token does not)"
            }
            Self::InvalidBearerToken => {
                "a bearer token that does not verify, on DIRAC's HTTPS protocol (its metrics \
                 outcome; the JSON API replies `unauthenticated`)"
            }
            Self::Forbidden => {
                "refused by a rule or a method check (another user's ID, banned IP, limited proxy)"
            }
            Self::MalformedJson => "the body is not JSON",
            Self::BadRequest => "the body is not a JSON object, or cannot be read",
            Self::BadArgument => "an unknown, missing or mistyped argument",
            Self::BodyTooLarge => "a body above `MaxBodyBytes`",
            Self::RequestTimeout => "the body did not arrive in time",
            Self::UnknownMethod => "no such method",
            Self::MethodNotAllowed => "not POST",
            Self::NotFound => "no such path",
            Self::UnknownUser => "a user name without DN in the Registry",
            Self::UnknownProvider => "an IdP that is not configured",
            Self::InvalidToken => "a token dictionary DIRAC would refuse (same messages)",
            Self::NoIdp => "getToken: a group whose VO has no IdP, and no IdP named",
            Self::AudienceNotAllowed => {
                "getToken: an audience outside the IdP's allow-list (the IdP is not contacted), \
                 or one the IdP refused to exchange for (`invalid_target`, with \
                 `audience_narrowing = exchange`; the stored token is unchanged)"
            }
            Self::ScopeNotGranted => {
                "getToken: scopes (the group's `IdPRole` ones included) the user did not delegate \
                 in the stored login, or, with `audience_narrowing = exchange`, that the user's \
                 broad token lacks (the IdP is not contacted); the message names them"
            }
            Self::NoToken => "getToken: no stored token for the user at that IdP",
            Self::NeedsRedelegation => {
                "getToken: the IdP refused the stored token, or a refresh reply was lost; the \
                 user must log in again (updateToken)"
            }
            Self::IdpRefused => {
                "getToken: the IdP refused the request (a token exchange included); the stored \
                 token is unchanged"
            }
            Self::IdpUnavailable => {
                "getToken: the IdP timed out or failed; the stored token is unchanged"
            }
            Self::ConfigRejected => {
                "refreshConfiguration: the new configuration is refused (the one in force stays)"
            }
            Self::Internal => "storage unavailable, or a reply that cannot be encoded",
        }
    }

    /// The only methods that reply this code; empty when any method may.
    pub fn only_from(self) -> &'static [Method] {
        match self {
            Self::NoIdp
            | Self::AudienceNotAllowed
            | Self::ScopeNotGranted
            | Self::NoToken
            | Self::NeedsRedelegation
            | Self::IdpRefused
            | Self::IdpUnavailable => &[Method::GetToken],
            Self::UnknownUser => &[
                Method::GetToken,
                Method::GetUserTokensInfo,
                Method::GetUsersTokensInfo,
                Method::GetTokenAudit,
            ],
            Self::UnknownProvider => &[Method::GetToken, Method::UpdateToken],
            Self::InvalidToken => &[Method::UpdateToken],
            Self::ConfigRejected => &[Method::RefreshConfiguration],
            Self::Unauthenticated
            | Self::InvalidBearerToken
            | Self::Forbidden
            | Self::MalformedJson
            | Self::BadRequest
            | Self::BadArgument
            | Self::BodyTooLarge
            | Self::RequestTimeout
            | Self::UnknownMethod
            | Self::MethodNotAllowed
            | Self::NotFound
            | Self::Internal => &[],
        }
    }

    /// The code a JSON API reply carries for this failure: the JSON API calls every failed
    /// identification `unauthenticated` (its message says what is wrong).
    pub fn on_json_api(self) -> ErrorCode {
        match self {
            Self::InvalidBearerToken => Self::Unauthenticated,
            other => other,
        }
    }

    /// Whether a call of `method` may be answered with this code.
    pub fn applies_to(self, method: Method) -> bool {
        let only = self.only_from();
        only.is_empty() || only.contains(&method)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// docs/API.md's error table, one row per code.
pub fn markdown_table() -> String {
    let mut table =
        String::from("| code | HTTP status | DIRAC message | meaning |\n|---|---|---|---|\n");
    for code in ErrorCode::ALL {
        table.push_str(&format!(
            "| `{code}` | {} | {} | {} |\n",
            code.http_status().as_u16(),
            code.dirac_reply(),
            code.description()
        ));
    }
    table
}

/// How a method call failed: a stable code, and the message DIRAC's S_ERROR carries.
#[derive(Debug, Error)]
pub enum MethodError {
    /// The access check refused the call: DIRAC's `Unauthorized query` (errno 1111).
    #[error("Unauthorized query")]
    Unauthorized(Denied),
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
}

impl MethodError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthorized(Denied::NoCredentials) => ErrorCode::Unauthenticated,
            Self::Unauthorized(_) => ErrorCode::Forbidden,
            Self::Refused { code, .. } => *code,
        }
    }
}

impl From<DbError> for MethodError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Refused(refusal) => MethodError::from(refusal),
            other => {
                // The cause is logged here; callers only learn that storage failed.
                tracing::error!(error = %other, "storage error");
                MethodError::new(ErrorCode::Internal, "Token storage is unavailable")
            }
        }
    }
}

impl From<TokenDictError> for MethodError {
    fn from(error: TokenDictError) -> Self {
        MethodError::new(ErrorCode::InvalidToken, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_listed_once() {
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    /// docs/API.md shows [`markdown_table`] between its markers, exactly.
    #[test]
    fn the_docs_error_table_is_the_enums() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md");
        let docs = std::fs::read_to_string(&path).expect("docs/API.md");
        let expected = markdown_table();
        let shown = docs
            .split_once("<!-- error-codes:begin -->\n")
            .and_then(|(_, rest)| rest.split_once("<!-- error-codes:end -->"))
            .map(|(table, _)| table);
        assert!(
            shown == Some(expected.as_str()),
            "docs/API.md must hold, between `<!-- error-codes:begin -->` and \
             `<!-- error-codes:end -->`, exactly:\n{expected}"
        );
    }
}
