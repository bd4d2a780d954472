//! Bearer tokens on HTTPS (docs/DIRAC.md#callers-with-a-bearer-token): an IdP-issued JWT, checked
//! against that IdP's JWKS (cached, fetched again for an unknown key id), its issuer, expiry and,
//! if configured, audience.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use super::{IdpClient, IdpError};
use crate::domain::scopes::{ProviderType, ScopeSet};

/// A JWKS fetched again at most this often when a token names an unknown key id.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BearerError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("no configured identity provider issued this token")]
    UnknownIssuer,
    #[error("the token's signature, issuer, expiry or audience is not valid: {0}")]
    Invalid(String),
    /// Without an audience to check, any access token the IdP issued for a user — one this
    /// service handed to FTS, say — would authenticate as that user here.
    #[error(
        "identity provider {0} accepts no bearer tokens: /Resources/IdProviders/{0}/bearer_audience is not set"
    )]
    NoAudience(String),
    #[error(transparent)]
    Idp(#[from] IdpError),
}

/// What a valid bearer token says of its subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerIdentity {
    pub sub: String,
    pub scopes: ScopeSet,
    /// The issuing IdP's type, which says what scopes its groups imply.
    pub provider_type: ProviderType,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct UnverifiedIssuer {
    iss: String,
}

/// The issuer a JWT claims, unverified: only to pick the IdP whose keys then verify it.
pub fn claimed_issuer(token: &str) -> Result<String, BearerError> {
    use base64::Engine;
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| BearerError::Malformed("no payload".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| BearerError::Malformed(e.to_string()))?;
    let claims: UnverifiedIssuer =
        serde_json::from_slice(&bytes).map_err(|e| BearerError::Malformed(e.to_string()))?;
    Ok(claims.iss.trim_end_matches('/').to_owned())
}

impl IdpClient {
    /// Verifies a JWT this IdP issued.
    pub async fn verify_bearer(&self, token: &str) -> Result<BearerIdentity, BearerError> {
        let options = self.options();
        let Some(audience) = options.bearer_audience.clone() else {
            return Err(BearerError::NoAudience(options.name.clone()));
        };
        let header = decode_header(token).map_err(|e| BearerError::Malformed(e.to_string()))?;
        // Asymmetric algorithms only: an HMAC key would be the IdP's public key used as a secret.
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(BearerError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let jwks = self.jwks(&kid).await?;
        let jwk = jwks
            .keys
            .iter()
            .find(|k| header.kid.is_none() || k.common.key_id.as_deref() == Some(kid.as_str()))
            .ok_or_else(|| BearerError::Invalid(format!("no key {kid} in the IdP's JWKS")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| BearerError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&options.issuer, &format!("{}/", options.issuer)]);
        validation.leeway = options.bearer_leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.set_audience(&[audience]);
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| BearerError::Invalid(e.to_string()))?
            .claims;
        Ok(BearerIdentity {
            sub: claims.sub,
            scopes: ScopeSet::parse(claims.scope.as_deref().unwrap_or_default()),
            provider_type: options.provider_type,
        })
    }

    /// The IdP's keys, cached; fetched again when `kid` is not among them (key rotation at the
    /// IdP), at most every few seconds.
    async fn jwks(&self, kid: &str) -> Result<JwkSet, IdpError> {
        let cached = self
            .discovery
            .jwks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((set, fetched)) = &cached {
            let known = set
                .keys
                .iter()
                .any(|k| k.common.key_id.as_deref() == Some(kid))
                || kid.is_empty();
            if (known && fetched.elapsed() < self.options().discovery_refresh)
                || fetched.elapsed() < JWKS_MIN_REFETCH
            {
                return Ok(set.clone());
            }
        }
        let discovered = self.client().await?;
        let response = self
            .http
            .get(discovered.document.jwks_uri.as_str())
            .header("Accept", "application/json")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| self.unavailable(format!("JWKS: {e}")))?;
        let body = response
            .bytes()
            .await
            .map_err(|e| self.unavailable(format!("JWKS: {e}")))?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| self.unavailable(format!("JWKS: {e}")))?;
        *self
            .discovery
            .jwks
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some((set.clone(), Instant::now()));
        Ok(set)
    }
}
