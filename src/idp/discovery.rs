//! One issuer's discovery document and JWKS, shared by every `/Resources/IdProviders` section
//! that names the issuer (DIRAC 9 names an OAuth client by its section, so one issuer may have
//! several): fetched once for all of them, the client part (id, secret, authentication method)
//! staying each section's own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{AdditionalProviderMetadata, ProviderMetadata, RevocationUrl};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// The RFC 7009 endpoint is not part of OpenID discovery's core fields.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct RevocationEndpoint {
    pub(super) revocation_endpoint: Option<String>,
}
impl AdditionalProviderMetadata for RevocationEndpoint {}

pub(super) type Metadata = ProviderMetadata<
    RevocationEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// A discovery document as fetched, with what is read of it.
pub(super) struct Document {
    pub(super) metadata: Metadata,
    pub(super) revocation: Option<RevocationUrl>,
    /// For the requests the openidconnect crate has no type for (token exchange).
    pub(super) token_endpoint: Option<String>,
    pub(super) jwks_uri: String,
    pub(super) fetched: Instant,
}

/// The cache of one issuer (and discovery URL). Each section judges freshness by its own
/// `discovery_refresh`; a transport failure in any of them makes the document due for all.
#[derive(Default)]
pub(super) struct SharedDiscovery {
    document: RwLock<Option<Arc<Document>>>,
    /// Set after a transport failure (the endpoints may have moved), cleared by a fetch.
    due: AtomicBool,
    /// One fetch at a time; the others wait for its document.
    pub(super) discovering: Mutex<()>,
    pub(super) jwks: RwLock<Option<(JwkSet, Instant)>>,
}

impl SharedDiscovery {
    /// The cached document, fresh or not.
    pub(super) fn cached(&self) -> Option<Arc<Document>> {
        self.document
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The cached document if younger than `refresh` and not made due by a failure.
    pub(super) fn fresh(&self, refresh: Duration) -> Option<Arc<Document>> {
        self.cached()
            .filter(|d| !self.due.load(Ordering::Acquire) && d.fetched.elapsed() < refresh)
    }

    pub(super) fn store(&self, document: Arc<Document>) {
        *self.document.write().unwrap_or_else(|e| e.into_inner()) = Some(document);
        self.due.store(false, Ordering::Release);
    }

    pub(super) fn make_due(&self) {
        self.due.store(true, Ordering::Release);
    }
}
