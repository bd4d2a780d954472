use std::time::Duration;

use super::IdpError;
use crate::config::IdProvider;
use crate::config::idp_options::{
    ALLOWED_AUDIENCES, AUDIENCE_NARROWING, AUDIENCE_PARAMETER, BEARER_AUDIENCE, BEARER_LEEWAY,
    CONNECT_TIMEOUT, DISCOVERY_REFRESH, LATE_REPLY_WAIT, MAX_IN_FLIGHT, SERVER_METADATA_URL,
    TIMEOUT, TOKEN_ENDPOINT_AUTH_METHOD,
};
use crate::domain::Secret;
use crate::domain::scopes::ProviderType;

/// The grant a token is obtained with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// A user's token, from their stored refresh token.
    RefreshToken,
    /// DIRAC's own token.
    ClientCredentials,
    /// A user's token narrowed to an audience by exchanging a broad one (RFC 8693).
    TokenExchange,
}

/// How a user token gets the audience a caller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudienceNarrowing {
    /// The audience is sent with the refresh token.
    Refresh,
    /// A refresh without audience, then an RFC 8693 exchange of its access token for the
    /// audience: the refresh token never travels with a caller's audience.
    Exchange,
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
    pub audience_narrowing: AudienceNarrowing,
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
        let secret_in_body = match idp
            .get(&TOKEN_ENDPOINT_AUTH_METHOD)
            .map_err(&problem)?
            .as_str()
        {
            "client_secret_basic" => false,
            "client_secret_post" => true,
            other => {
                return Err(problem(format!(
                    "token_endpoint_auth_method {other} is not client_secret_basic or client_secret_post"
                )));
            }
        };
        let audience_parameter = match idp.get(&AUDIENCE_PARAMETER).map_err(&problem)?.as_str() {
            "audience" => AudienceParameter::Audience,
            "resource" => AudienceParameter::Resource,
            other => {
                return Err(problem(format!(
                    "audience_parameter {other} is not audience or resource"
                )));
            }
        };
        let audience_narrowing = match idp.get(&AUDIENCE_NARROWING).map_err(&problem)?.as_str() {
            "refresh" => AudienceNarrowing::Refresh,
            "exchange" => AudienceNarrowing::Exchange,
            other => {
                return Err(problem(format!(
                    "audience_narrowing {other} is not refresh or exchange"
                )));
            }
        };
        let allowed_audiences = idp.optional(&ALLOWED_AUDIENCES).map_err(&problem)?;
        let max_in_flight = idp.get(&MAX_IN_FLIGHT).map_err(&problem)?;
        Ok(Self {
            name: name.clone(),
            discovery_url: idp
                .optional(&SERVER_METADATA_URL)
                .map_err(&problem)?
                .unwrap_or_else(|| format!("{issuer}/.well-known/openid-configuration")),
            provider_type,
            issuer,
            client_id,
            client_secret: idp.client_secret().cloned(),
            secret_in_body,
            audience_parameter,
            audience_narrowing,
            allowed_audiences,
            timeout: idp.get(&TIMEOUT).map_err(&problem)?,
            connect_timeout: idp.get(&CONNECT_TIMEOUT).map_err(&problem)?,
            late_reply_wait: idp.get(&LATE_REPLY_WAIT).map_err(&problem)?,
            max_in_flight,
            discovery_refresh: idp.get(&DISCOVERY_REFRESH).map_err(&problem)?,
            bearer_audience: idp.optional(&BEARER_AUDIENCE).map_err(&problem)?,
            bearer_leeway: idp.get(&BEARER_LEEWAY).map_err(&problem)?,
        })
    }

    /// How long a `refresh_token` request may take in all, its late reply included.
    pub fn refresh_timeout(&self) -> Duration {
        self.timeout + self.late_reply_wait
    }

    /// The grant a user token with `audience` is obtained with.
    pub fn user_token_grant(&self, audience: Option<&str>) -> Grant {
        match (audience, self.audience_narrowing) {
            (Some(_), AudienceNarrowing::Exchange) => Grant::TokenExchange,
            _ => Grant::RefreshToken,
        }
    }

    /// Refuses an audience the grant may not ask for, before the IdP is contacted: some IdPs
    /// rotate the refresh token and only then refuse an audience the grant does not cover, which
    /// burns the user's grant. With no allow-list a refreshed user token gets no audience at all
    /// (what the user delegated is unknown here), while a client token or an exchanged one,
    /// which consume nothing, may ask for any.
    pub fn check_audience(&self, audience: Option<&str>, grant: Grant) -> Result<(), IdpError> {
        let Some(audience) = audience else {
            return Ok(());
        };
        let allowed = match (&self.allowed_audiences, grant) {
            (Some(allowed), _) => allowed.iter().any(|a| a == audience),
            (None, Grant::RefreshToken) => false,
            (None, Grant::ClientCredentials | Grant::TokenExchange) => true,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Section, resolve};
    use std::path::Path;

    /// The options of IdP `i` (issuer and client ID set) plus `extra`.
    fn options_with(extra: &str) -> Result<IdpOptions, IdpError> {
        let text = format!(
            "Systems\n{{\nFramework\n{{\nServices\n{{\nTokenManager\n{{\nEncryptionKeyFile = k\n}}\n}}\n\
             Databases\n{{\nTokenDB\n{{\nURL = sqlite://x\n}}\n}}\n}}\n}}\n\
             Resources\n{{\nIdProviders\n{{\ni\n{{\nissuer = https://idp.example.org/\n\
             client_id = c\n{extra}\n}}\n}}\n}}\n"
        );
        let root = Section::parse(&text, Path::new("/etc/tm/i.cfg")).unwrap();
        let settings = resolve(&root, &|_| None).unwrap().settings;
        IdpOptions::from_config(settings.idp("i").unwrap())
    }

    fn problem_of(extra: &str) -> String {
        match options_with(extra) {
            Err(IdpError::Config { idp, problem }) if idp == "i" => problem,
            other => panic!("{extra}: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_ones_of_before_the_declarations() {
        let o = options_with("").unwrap();
        assert_eq!(o.issuer, "https://idp.example.org");
        assert_eq!(
            o.discovery_url,
            "https://idp.example.org/.well-known/openid-configuration"
        );
        assert_eq!(o.provider_type, ProviderType::OAuth2);
        assert!(!o.secret_in_body);
        assert_eq!(o.audience_parameter, AudienceParameter::Audience);
        assert_eq!(o.audience_narrowing, AudienceNarrowing::Refresh);
        assert_eq!(o.allowed_audiences, None);
        let secs = Duration::from_secs;
        assert_eq!(
            (o.timeout, o.connect_timeout, o.late_reply_wait),
            (secs(10), secs(3), secs(60))
        );
        assert_eq!(o.max_in_flight, 32);
        assert_eq!(o.discovery_refresh, secs(3600));
        assert_eq!(o.bearer_audience, None);
        assert_eq!(o.bearer_leeway, secs(60));
    }

    #[test]
    fn set_options_are_read() {
        let o = options_with(
            "token_endpoint_auth_method = client_secret_post\naudience_parameter = resource\n\
             audience_narrowing = exchange\nallowed_audiences = a, ,b\nserver_metadata_url = https://m\ntimeout = 0.5\n\
             connect_timeout = 2\nlate_reply_wait = 7\nmax_in_flight = 4\n\
             discovery_refresh = 9\nbearer_audience = https://tm\nbearer_leeway = 0",
        )
        .unwrap();
        assert!(o.secret_in_body);
        assert_eq!(o.audience_parameter, AudienceParameter::Resource);
        assert_eq!(o.audience_narrowing, AudienceNarrowing::Exchange);
        assert_eq!(o.allowed_audiences, Some(vec!["a".into(), "b".into()]));
        assert_eq!(o.discovery_url, "https://m");
        let secs = Duration::from_secs;
        assert_eq!(
            (o.timeout, o.connect_timeout, o.late_reply_wait),
            (Duration::from_millis(500), secs(2), secs(7))
        );
        assert_eq!((o.max_in_flight, o.discovery_refresh), (4, secs(9)));
        assert_eq!(o.bearer_audience.as_deref(), Some("https://tm"));
        assert_eq!(o.bearer_leeway, Duration::ZERO);
    }

    #[test]
    fn bad_values_keep_their_messages() {
        for (extra, problem) in [
            (
                "ProviderType = X",
                "ProviderType X is not OAuth2, IAM or CheckIn",
            ),
            (
                "token_endpoint_auth_method = none",
                "token_endpoint_auth_method none is not client_secret_basic or client_secret_post",
            ),
            (
                "audience_parameter = aud",
                "audience_parameter aud is not audience or resource",
            ),
            (
                "audience_narrowing = token-exchange",
                "audience_narrowing token-exchange is not refresh or exchange",
            ),
            (
                "timeout = 0",
                "timeout = 0 is not a positive number of seconds",
            ),
            (
                "connect_timeout = inf",
                "connect_timeout = inf is not a positive number of seconds",
            ),
            (
                "late_reply_wait = -1",
                "late_reply_wait = -1 is not a positive number of seconds",
            ),
            (
                "discovery_refresh = x",
                "discovery_refresh = x is not a positive number of seconds",
            ),
            (
                "max_in_flight = 0",
                "max_in_flight = 0 is not a positive integer",
            ),
            (
                "bearer_leeway = 1.5",
                "bearer_leeway = 1.5 is not a number of seconds",
            ),
        ] {
            assert_eq!(problem_of(extra), problem, "{extra}");
        }
        assert_eq!(problem_of("issuer =\nclient_id = c"), "issuer is not set");
    }

    #[test]
    fn exchanged_user_tokens_may_ask_for_any_audience_without_an_allow_list() {
        let refresh = options_with("").unwrap();
        assert_eq!(refresh.user_token_grant(Some("a")), Grant::RefreshToken);
        assert!(
            refresh
                .check_audience(Some("a"), Grant::RefreshToken)
                .is_err()
        );
        let exchange = options_with("audience_narrowing = exchange").unwrap();
        assert_eq!(exchange.user_token_grant(None), Grant::RefreshToken);
        assert_eq!(exchange.user_token_grant(Some("a")), Grant::TokenExchange);
        assert!(
            exchange
                .check_audience(Some("a"), Grant::TokenExchange)
                .is_ok()
        );
        // A refresh still never carries an unlisted audience.
        assert!(
            exchange
                .check_audience(Some("a"), Grant::RefreshToken)
                .is_err()
        );
        let listed = options_with("audience_narrowing = exchange\nallowed_audiences = b").unwrap();
        assert!(
            listed
                .check_audience(Some("a"), Grant::TokenExchange)
                .is_err()
        );
        assert!(
            listed
                .check_audience(Some("b"), Grant::TokenExchange)
                .is_ok()
        );
    }
}
