//! Identity providers: the only code that calls out over HTTP. One [`IdpClient`] per
//! `/Resources/IdProviders/<name>` section (DIRAC 9 names an OAuth client by its section, so
//! one issuer may have several, each with its own client), the issuer's discovery cached and
//! shared by its sections, its requests bounded in time and number, and its errors sorted into
//! what the token path must do about them.

mod backoff;
mod bearer;
mod client;
mod discovery;
mod options;

use std::collections::HashMap;
use std::sync::Arc;

pub use bearer::{BearerError, BearerIdentity, claimed_issuer};
pub use client::{IdpClient, IssuedToken};
pub use options::{AudienceNarrowing, AudienceParameter, Grant, IdpOptions};

use crate::config::Settings;
use crate::metrics::Metrics;
use discovery::SharedDiscovery;

/// How an IdP call failed, sorted by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// The section's options are unusable.
    #[error("identity provider {idp}: {problem}")]
    Config { idp: String, problem: String },
    /// The audience is not in the IdP's allow-list (or, without one, a user token asked for an
    /// audience): refused before any request.
    #[error("{}", audience_refusal(.idp, .audience, *.listed))]
    AudienceNotAllowed {
        idp: String,
        audience: String,
        /// Whether the IdP has an allow-list.
        listed: bool,
    },
    /// The IdP refused the refresh token: only a new login (updateToken) helps.
    #[error("Invalid refresh token: invalid_grant: {0}")]
    InvalidGrant(String),
    /// The IdP refused this request (scope, audience, client...); the stored token is intact.
    #[error("{context}: {error}: {description}")]
    Refused {
        context: &'static str,
        error: String,
        description: String,
    },
    /// The IdP refused a token exchange (RFC 8693 `error`: `invalid_target`, `invalid_scope`,
    /// `invalid_grant` for the subject token...): an error of that call only, since no refresh
    /// token was presented.
    #[error("Token exchange refused by {idp}: {error}: {description}")]
    ExchangeRefused {
        idp: String,
        error: String,
        description: String,
    },
    /// Discovery failed, the IdP timed out, refused the connection or answered 5xx: nothing was
    /// consumed, a later call may succeed.
    #[error("identity provider {idp} is unavailable: {reason}")]
    Unavailable { idp: String, reason: String },
    /// The request reached the IdP but its reply was lost: the refresh token may have been
    /// consumed, so it must not be presented again.
    #[error("identity provider {idp} did not answer a request it received: {reason}")]
    ReplyLost { idp: String, reason: String },
}

fn audience_refusal(idp: &str, audience: &str, listed: bool) -> String {
    if listed {
        format!("audience {audience} is not allowed for identity provider {idp}")
    } else {
        format!(
            "audience {audience} is not allowed for identity provider {idp}: user tokens get an \
             audience only when /Resources/IdProviders/{idp}/allowed_audiences lists it"
        )
    }
}

/// Every configured IdP, built from the settings (again on reload).
#[derive(Clone, Default)]
pub struct IdpRegistry {
    clients: HashMap<String, Arc<IdpClient>>,
    /// The same clients in the configuration's order, which bearer tokens are tried in.
    in_order: Vec<Arc<IdpClient>>,
}

impl IdpRegistry {
    pub fn from_settings(settings: &Settings, metrics: &Arc<Metrics>) -> Result<Self, IdpError> {
        let mut clients = HashMap::new();
        let mut in_order = Vec::new();
        // Sections of one issuer (and discovery URL) share its discovery document and JWKS.
        let mut discoveries: HashMap<(String, String), Arc<SharedDiscovery>> = HashMap::new();
        for idp in &settings.idps {
            let options = IdpOptions::from_config(idp)?;
            let discovery = discoveries
                .entry((options.issuer.clone(), options.discovery_url.clone()))
                .or_default()
                .clone();
            let client = Arc::new(IdpClient::sharing(options, metrics.clone(), discovery)?);
            clients.insert(idp.name().to_owned(), client.clone());
            in_order.push(client);
        }
        Ok(Self { clients, in_order })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<IdpClient>> {
        self.clients.get(name)
    }

    /// Verifies a bearer token with the keys of the IdP whose issuer it names: valid if any
    /// section of that issuer accepts it (each has its own `bearer_audience`), tried in the
    /// configuration's order; when none does, the first one's refusal. A malformed token or an
    /// unreachable issuer fails at once: the issuer's other sections share the same keys.
    pub async fn verify_bearer(&self, token: &str) -> Result<BearerIdentity, BearerError> {
        let issuer = claimed_issuer(token)?;
        let mut first_refusal = None;
        for idp in self
            .in_order
            .iter()
            .filter(|c| c.options().issuer == issuer)
        {
            match idp.verify_bearer(token).await {
                Ok(identity) => return Ok(identity),
                Err(refusal @ (BearerError::Invalid(_) | BearerError::NoAudience(_))) => {
                    first_refusal.get_or_insert(refusal);
                }
                Err(failure) => return Err(failure),
            }
        }
        Err(first_refusal.unwrap_or(BearerError::UnknownIssuer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Section, resolve};
    use std::path::Path;

    #[test]
    fn sections_of_one_issuer_share_its_discovery_and_keep_their_clients() {
        let section = |name: &str, issuer: &str, client: &str| {
            format!("{name}\n{{\nissuer = {issuer}\nclient_id = {client}\n}}\n")
        };
        let text = format!(
            "Systems\n{{\nFramework\n{{\nServices\n{{\nTokenManager\n{{\nEncryptionKeyFile = k\n}}\n}}\n\
             Databases\n{{\nTokenDB\n{{\nURL = sqlite://x\n}}\n}}\n}}\n}}\n\
             Resources\n{{\nIdProviders\n{{\n{}{}{}}}\n}}\n",
            section("users", "https://idp.example.org/", "tm-users"),
            section("pilots", "https://idp.example.org", "tm-pilots"),
            section("other", "https://other.example.org", "tm-users"),
        );
        let root = Section::parse(&text, Path::new("/etc/tm/i.cfg")).unwrap();
        let settings = resolve(&root, &|_| None).unwrap().settings;
        let registry =
            IdpRegistry::from_settings(&settings, &Arc::new(Metrics::unexported())).unwrap();
        let [users, pilots, other] =
            ["users", "pilots", "other"].map(|name| registry.get(name).unwrap().clone());
        assert!(Arc::ptr_eq(&users.discovery, &pilots.discovery));
        assert!(!Arc::ptr_eq(&users.discovery, &other.discovery));
        assert_eq!(
            (
                users.options().client_id.as_str(),
                pilots.options().client_id.as_str()
            ),
            ("tm-users", "tm-pilots")
        );
    }
}
