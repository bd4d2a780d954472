//! getToken (docs/DIRAC.md#gettoken): authorize, resolve the IdP and the scopes, check delegation,
//! then the cache and, on a miss, the key's refresh actor. DIRAC's messages where DIRAC has them.

use serde_json::{Map, Value, json};

use super::{ErrorCode, GetTokenArgs, MethodError};
use crate::actors::audit::HandoutKey;
use crate::actors::tokens::{AccessToken, Subject, TokenBroker, TokenError, TokenKey};
use crate::config::Settings;
use crate::domain::policy::{self, Authorized};
use crate::domain::scopes::group_scopes;
use crate::domain::unix_now;
use crate::idp::{Grant, IdpError, IdpRegistry};

fn token_error(error: TokenError) -> MethodError {
    let code = match &error {
        TokenError::NoCredential(_) => ErrorCode::NoToken,
        TokenError::NeedsRedelegation { .. } | TokenError::Idp(IdpError::InvalidGrant(_)) => {
            ErrorCode::NeedsRedelegation
        }
        TokenError::Idp(IdpError::AudienceNotAllowed { .. }) => ErrorCode::AudienceNotAllowed,
        // A refused exchange is an error of that call: it presented no refresh token.
        TokenError::Idp(IdpError::ExchangeRefused { error, .. }) if error == "invalid_target" => {
            ErrorCode::AudienceNotAllowed
        }
        TokenError::Idp(IdpError::ExchangeRefused { .. }) => ErrorCode::IdpRefused,
        TokenError::ScopeNotGranted { .. } => ErrorCode::ScopeNotGranted,
        TokenError::Idp(IdpError::Refused { .. }) => ErrorCode::IdpRefused,
        TokenError::Idp(_) => ErrorCode::IdpUnavailable,
        TokenError::NotStored | TokenError::Storage => ErrorCode::Internal,
    };
    MethodError::new(code, error.to_string())
}

/// getToken; `handout` gets what the audit trail records of it, as far as the call got.
pub async fn get_token(
    settings: &Settings,
    idps: &IdpRegistry,
    broker: &TokenBroker,
    caller: &Authorized,
    request: GetTokenArgs,
    handout: &mut HandoutKey,
) -> Result<Value, MethodError> {
    let registry = &settings.registry;
    let group = request.group.as_deref();
    let provider = match request.provider.clone().or_else(|| {
        group
            .and_then(|g| registry.idp_for_group(g))
            .map(str::to_owned)
    }) {
        Some(provider) => provider,
        None => {
            return Err(MethodError::new(
                ErrorCode::NoIdp,
                format!(
                    "The {} group belongs to the VO that is not tied to any Identity Provider.",
                    group.unwrap_or("None")
                ),
            ));
        }
    };
    handout.provider = Some(provider.clone());
    let idp = idps.get(&provider).ok_or_else(|| {
        MethodError::new(
            ErrorCode::UnknownProvider,
            format!("Path /Resources/IdProviders/{provider} does not exist or it's not a section"),
        )
    })?;
    let options = idp.options();
    // The requested scopes are added to the group's (DIRAC's refresh replaced them).
    let scopes = match group {
        Some(group) => request.scopes.union(&group_scopes(
            options.provider_type,
            group,
            registry.group(group).and_then(|g| g.idp_role.as_deref()),
            registry.vo_for_group(group),
        )),
        None => request.scopes.clone(),
    };
    handout.client_id = Some(options.client_id.clone());
    handout.scopes = Some(scopes.to_string());
    let grant = match request.username {
        Some(_) => options.user_token_grant(request.audience.as_deref()),
        None => Grant::ClientCredentials,
    };
    options
        .check_audience(request.audience.as_deref(), grant)
        .map_err(|e| token_error(e.into()))?;
    let key = |subject| TokenKey {
        subject,
        provider: provider.clone(),
        client_id: options.client_id.clone(),
        scopes: scopes.clone(),
        audience: request.audience.clone(),
    };

    let Some(username) = request.username.as_deref() else {
        // A client token, for DIRAC itself.
        policy::delegation(caller, "", "", registry)
            .map_err(|m| MethodError::new(ErrorCode::Forbidden, m))?;
        let (token, origin) = broker
            .obtain(idp, key(Subject::Client), request.required_time_left)
            .await
            .map_err(token_error)?;
        handout.origin = Some(origin);
        let mut reply = reply(&token);
        reply.insert("client_id".into(), json!(options.client_id));
        reply.insert("provider".into(), json!(provider));
        return Ok(Value::Object(reply));
    };

    let ids = super::user_ids(settings, username)?;
    // DIRAC does not check this; a token for a group the user is not in is refused here.
    if let Some(group) = group
        && !registry.is_member(group, username)
    {
        return Err(MethodError::new(
            ErrorCode::Forbidden,
            format!("User {username} is not a member of group {group}"),
        ));
    }
    policy::delegation(caller, username, group.unwrap_or_default(), registry)
        .map_err(|m| MethodError::new(ErrorCode::Forbidden, m))?;
    if ids.is_empty() {
        return Err(MethodError::new(
            ErrorCode::NoToken,
            format!("No user ID found for {username}"),
        ));
    }
    let mut errors = Vec::new();
    let first_id = ids.first().copied();
    for id in ids {
        handout.user_id = Some(id.to_owned());
        match broker
            .obtain(
                idp,
                key(Subject::User(id.to_owned())),
                request.required_time_left,
            )
            .await
        {
            Ok((token, origin)) => {
                handout.origin = Some(origin);
                return Ok(Value::Object(reply(&token)));
            }
            Err(error) => errors.push(token_error(error)),
        }
    }
    // DIRAC joins the failures of every ID; the code is the first one's (and the audit's
    // user ID the first one's).
    handout.user_id = first_id.map(str::to_owned);
    let code = errors.first().map_or(ErrorCode::NoToken, MethodError::code);
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Err(MethodError::new(code, message))
}

/// DIRAC's reply keys, without refresh or id token: those never leave the service.
fn reply(token: &AccessToken) -> Map<String, Value> {
    let now = unix_now();
    let mut reply = Map::new();
    reply.insert("access_token".into(), json!(token.access_token.expose()));
    reply.insert("token_type".into(), json!(token.token_type));
    reply.insert("expires_in".into(), json!(token.seconds_left(now).max(0)));
    reply.insert("expires_at".into(), json!(token.expires_at));
    reply.insert("scope".into(), json!(token.scope.to_string()));
    reply
}
