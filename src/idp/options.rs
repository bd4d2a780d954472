use std::time::Duration;

use super::IdpError;
use crate::config::IdProvider;
use crate::domain::Secret;
use crate::domain::scopes::ProviderType;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_LATE_REPLY_WAIT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
pub const DEFAULT_DISCOVERY_REFRESH: Duration = Duration::from_secs(3600);
pub const DEFAULT_BEARER_LEEWAY: Duration = Duration::from_secs(60);

/// The grant a token is obtained with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// A user's token, from their stored refresh token.
    RefreshToken,
    /// DIRAC's own token.
    ClientCredentials,
}

/// How the requested audience travels to the IdP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudienceParameter {
    /// `audience=…`, as INDIGO IAM and DIRAC send it.
    Audience,
    /// RFC 8707 `resource=…`.
    Resource,
}

impl AudienceParameter {
    pub fn name(self) -> &'static str {
        match self {
            Self::Audience => "audience",
            Self::Resource => "resource",
        }
    }
}

/// The options of one `/Resources/IdProviders/<name>` section that the token path uses. DIRAC's
/// own names where DIRAC has the option, ours (documented in config/README.md) otherwise.
#[derive(Clone, Debug)]
pub struct IdpOptions {
    pub name: String,
    pub provider_type: ProviderType,
    pub issuer: String,
    /// DIRAC's `server_metadata_url`; default `<issuer>/.well-known/openid-configuration`.
    pub discovery_url: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// `client_secret_post` sends the secret in the body; `client_secret_basic` (the default with
    /// a secret) in the Authorization header.
    pub secret_in_body: bool,
    pub audience_parameter: AudienceParameter,
    /// None (unset): user tokens get no audience, client tokens any; Some: only these, for both.
    pub allowed_audiences: Option<Vec<String>>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a refresh keeps waiting for the IdP's reply after its callers got `timeout`: a
    /// refresh token the IdP rotated late is then stored instead of lost with the connection.
    pub late_reply_wait: Duration,
    pub max_in_flight: usize,
    pub discovery_refresh: Duration,
    /// The audience a bearer token must carry to identify a caller; None: bearer tokens from
    /// this IdP identify no one.
    pub bearer_audience: Option<String>,
    /// Clock skew tolerated on a bearer token's expiry.
    pub bearer_leeway: Duration,
}

impl IdpOptions {
    pub fn from_config(idp: &IdProvider) -> Result<Self, IdpError> {
        let name = idp.name().to_owned();
        let problem = |problem: String| IdpError::Config {
            idp: name.clone(),
            problem,
        };
        let provider_type = ProviderType::parse(idp.provider_type()).ok_or_else(|| {
            problem(format!(
                "ProviderType {} is not OAuth2, IAM or CheckIn",
                idp.provider_type()
            ))
        })?;
        let issuer = idp
            .issuer()
            .filter(|i| !i.is_empty())
            .ok_or_else(|| problem("issuer is not set".into()))?
            .trim_end_matches('/')
            .to_owned();
        let client_id = idp
            .client_id()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| problem("client_id is not set".into()))?
            .to_owned();
        let secret_in_body = match idp.token_endpoint_auth_method() {
            None | Some("client_secret_basic") => false,
            Some("client_secret_post") => true,
            Some(other) => {
                return Err(problem(format!(
                    "token_endpoint_auth_method {other} is not client_secret_basic or client_secret_post"
                )));
            }
        };
        let audience_parameter = match idp.option("audience_parameter") {
            None | Some("audience") => AudienceParameter::Audience,
            Some("resource") => AudienceParameter::Resource,
            Some(other) => {
                return Err(problem(format!(
                    "audience_parameter {other} is not audience or resource"
                )));
            }
        };
        let allowed_audiences = idp.option("allowed_audiences").map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect()
        });
        let seconds = |option: &str, default: Duration| -> Result<Duration, IdpError> {
            match idp.option(option) {
                None => Ok(default),
                Some(text) => text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        problem(format!(
                            "{option} = {text} is not a positive number of seconds"
                        ))
                    }),
            }
        };
        let max_in_flight = match idp.option("max_in_flight") {
            None => DEFAULT_MAX_IN_FLIGHT,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    problem(format!("max_in_flight = {text} is not a positive integer"))
                })?,
        };
        Ok(Self {
            name: name.clone(),
            discovery_url: idp
                .option("server_metadata_url")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{issuer}/.well-known/openid-configuration")),
            provider_type,
            issuer,
            client_id,
            client_secret: idp.client_secret().cloned(),
            secret_in_body,
            audience_parameter,
            allowed_audiences,
            timeout: seconds("timeout", DEFAULT_TIMEOUT)?,
            connect_timeout: seconds("connect_timeout", DEFAULT_CONNECT_TIMEOUT)?,
            late_reply_wait: seconds("late_reply_wait", DEFAULT_LATE_REPLY_WAIT)?,
            max_in_flight,
            discovery_refresh: seconds("discovery_refresh", DEFAULT_DISCOVERY_REFRESH)?,
            bearer_audience: idp
                .option("bearer_audience")
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
            bearer_leeway: match idp.option("bearer_leeway") {
                None => DEFAULT_BEARER_LEEWAY,
                Some(text) => text
                    .trim()
                    .parse::<u64>()
                    .map(Duration::from_secs)
                    .map_err(|_| {
                        problem(format!("bearer_leeway = {text} is not a number of seconds"))
                    })?,
            },
        })
    }

    /// How long a `refresh_token` request may take in all, its late reply included.
    pub fn refresh_timeout(&self) -> Duration {
        self.timeout + self.late_reply_wait
    }

    /// Refuses an audience the grant may not ask for, before the IdP is contacted: some IdPs
    /// rotate the refresh token and only then refuse an audience the grant does not cover, which
    /// burns the user's grant. With no allow-list a user token gets no audience at all (what
    /// the user delegated is unknown here), while a client token, which consumes nothing, may ask
    /// for any.
    pub fn check_audience(&self, audience: Option<&str>, grant: Grant) -> Result<(), IdpError> {
        let Some(audience) = audience else {
            return Ok(());
        };
        let allowed = match (&self.allowed_audiences, grant) {
            (Some(allowed), _) => allowed.iter().any(|a| a == audience),
            (None, Grant::RefreshToken) => false,
            (None, Grant::ClientCredentials) => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(IdpError::AudienceNotAllowed {
                idp: self.name.clone(),
                audience: audience.to_owned(),
                listed: self.allowed_audiences.is_some(),
            })
        }
    }
}
