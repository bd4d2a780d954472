use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::{CoreClient, CoreErrorResponseType, CoreTokenResponse};
use openidconnect::{
    AuthType, ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    HttpClientError, IssuerUrl, OAuth2TokenResponse, RefreshToken, RequestTokenError,
    RevocationUrl, Scope, StandardErrorResponse,
};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::backoff::{self, Backoff};
use super::discovery::{Document, Metadata, SharedDiscovery};
use super::{Grant, IdpError, IdpOptions};
use crate::domain::Secret;
use crate::domain::scopes::ScopeSet;
use crate::metrics::Metrics;

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;
type TokenError = RequestTokenError<
    HttpClientError<reqwest::Error>,
    StandardErrorResponse<CoreErrorResponseType>,
>;

/// The issuer's discovery document with this section's client built on it.
#[derive(Clone)]
pub(super) struct Discovered {
    client: Client,
    pub(super) document: Arc<Document>,
}

/// What the IdP issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_in: Option<i64>,
    /// The scopes the IdP granted, when it says.
    pub scope: Option<ScopeSet>,
    /// A rotated refresh token, when the IdP rotates.
    pub refresh_token: Option<Secret>,
}

/// One IdP section: its issuer's discovery document cached (shared with the issuer's other
/// sections; fetched again after `discovery_refresh`, or after a failure, never per call), its
/// requests bounded in time and number.
pub struct IdpClient {
    options: IdpOptions,
    pub(super) http: reqwest::Client,
    /// For the `refresh_token` grant: bounded by `timeout + late_reply_wait`, since a rotating IdP
    /// that answers after `timeout` has consumed the refresh token we sent.
    refresh_http: reqwest::Client,
    pub(super) discovery: Arc<SharedDiscovery>,
    /// This section's client, built on the shared document it names.
    built: RwLock<Option<Discovered>>,
    in_flight: Semaphore,
    backoff: std::sync::Mutex<Backoff>,
    metrics: Arc<Metrics>,
}

/// An admitted request whose outcome is not recorded yet: dropped so (its caller went away),
/// it gives up its probe.
struct Attempt<'a> {
    client: &'a IdpClient,
    recorded: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.client.backoff().abandon();
        }
    }
}

impl IdpClient {
    /// A client for the IdP of `options`, counting its requests in `metrics`.
    pub fn new(options: IdpOptions, metrics: Arc<Metrics>) -> Result<Self, IdpError> {
        Self::sharing(options, metrics, Arc::default())
    }

    /// A client whose issuer's discovery document and JWKS are `discovery`, shared with the
    /// other sections of that issuer.
    pub(super) fn sharing(
        options: IdpOptions,
        metrics: Arc<Metrics>,
        discovery: Arc<SharedDiscovery>,
    ) -> Result<Self, IdpError> {
        let http_client = |timeout: Duration| {
            reqwest::Client::builder()
                // Following redirects would open the client to SSRF.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(options.connect_timeout)
                .timeout(timeout)
                // A fresh connection per request: a reply lost on a reused keep-alive connection
                // would be indistinguishable from one the IdP processed and did not answer.
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|e| IdpError::Config {
                    idp: options.name.clone(),
                    problem: e.to_string(),
                })
        };
        let http = http_client(options.timeout)?;
        let refresh_http = http_client(options.refresh_timeout())?;
        Ok(Self {
            in_flight: Semaphore::new(options.max_in_flight),
            options,
            http,
            refresh_http,
            discovery,
            built: RwLock::new(None),
            backoff: std::sync::Mutex::new(Backoff::default()),
            metrics,
        })
    }

    pub fn options(&self) -> &IdpOptions {
        &self.options
    }

    pub(super) fn unavailable(&self, reason: impl Into<String>) -> IdpError {
        IdpError::Unavailable {
            idp: self.options.name.clone(),
            reason: reason.into(),
        }
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `request` unless this IdP is being backed off from (see [`backoff`]): then the
    /// caller fails fast, and nothing is sent. Records whether the IdP was available.
    async fn guarded<T>(
        &self,
        request: impl Future<Output = Result<T, IdpError>>,
    ) -> Result<T, IdpError> {
        let admission = self.backoff().admit(tokio::time::Instant::now());
        if let backoff::Admission::Refuse { retry_in, failures } = admission {
            self.metrics
                .idp_backoff_refusals
                .with_label_values(&[&self.options.name])
                .inc();
            return Err(self.unavailable(format!(
                "backing off after {failures} failed requests in a row; next attempt in {:.1} s",
                retry_in.as_secs_f64()
            )));
        }
        let mut attempt = Attempt {
            client: self,
            recorded: false,
        };
        let result = request.await;
        let available = !matches!(
            result,
            Err(IdpError::Unavailable { .. } | IdpError::ReplyLost { .. })
        );
        let interval = {
            let mut backoff = self.backoff();
            backoff.record(available, tokio::time::Instant::now());
            backoff.interval()
        };
        attempt.recorded = true;
        self.metrics
            .idp_backoff_seconds
            .with_label_values(&[&self.options.name])
            .set(interval.as_secs_f64());
        result
    }

    /// The discovered client; fetches discovery when none is cached or the cached one is due,
    /// keeping a stale copy if the fetch fails.
    pub(super) async fn client(&self) -> Result<Discovered, IdpError> {
        let document = self.document().await?;
        if let Some(built) = self
            .built
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|b| Arc::ptr_eq(&b.document, &document))
        {
            return Ok(built.clone());
        }
        let mut client = CoreClient::from_provider_metadata(
            document.metadata.clone(),
            ClientId::new(self.options.client_id.clone()),
            self.options
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().to_owned())),
        );
        if self.options.secret_in_body {
            client = client.set_auth_type(AuthType::RequestBody);
        }
        let built = Discovered { client, document };
        *self.built.write().unwrap_or_else(|e| e.into_inner()) = Some(built.clone());
        Ok(built)
    }

    /// The issuer's discovery document, fetched by whichever of its sections needs it first.
    async fn document(&self) -> Result<Arc<Document>, IdpError> {
        let refresh = self.options.discovery_refresh;
        if let Some(current) = self.discovery.fresh(refresh) {
            return Ok(current);
        }
        let _one_at_a_time = self.discovery.discovering.lock().await;
        if let Some(current) = self.discovery.fresh(refresh) {
            return Ok(current);
        }
        match self.discover().await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.discovery.store(fresh.clone());
                Ok(fresh)
            }
            Err(error) => match self.discovery.cached() {
                Some(stale) => {
                    tracing::warn!(idp = %self.options.name, %error, "discovery failed; using the cached document");
                    Ok(stale)
                }
                None => Err(error),
            },
        }
    }

    /// After a transport failure the endpoints may have moved: fetch discovery again next time.
    fn discovery_is_due(&self) {
        self.discovery.make_due();
    }

    async fn discover(&self) -> Result<Document, IdpError> {
        let started = Instant::now();
        let result = self.fetch_discovery().await;
        self.observe("discovery", started, &result);
        result
    }

    async fn fetch_discovery(&self) -> Result<Document, IdpError> {
        let issuer = IssuerUrl::new(self.options.issuer.clone())
            .map_err(|e| self.unavailable(e.to_string()))?;
        let response = self
            .http
            .get(&self.options.discovery_url)
            .header("Accept", "application/json")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| self.unavailable(format!("discovery: {e}")))?;
        let body = response
            .bytes()
            .await
            .map_err(|e| self.unavailable(format!("discovery document: {e}")))?;
        let metadata: Metadata = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format!("discovery document: {e}")))?;
        // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
        if metadata.issuer().as_str().trim_end_matches('/') != issuer.as_str().trim_end_matches('/')
        {
            return Err(self.unavailable(format!(
                "discovery names issuer {} instead of {}",
                metadata.issuer().as_str(),
                issuer.as_str()
            )));
        }
        let revocation = metadata
            .additional_metadata()
            .revocation_endpoint
            .clone()
            .map(RevocationUrl::new)
            .transpose()
            .map_err(|e| self.unavailable(format!("revocation endpoint: {e}")))?;
        let jwks_uri = metadata.jwks_uri().url().to_string();
        let token_endpoint = metadata.token_endpoint().map(|url| url.url().to_string());
        tracing::info!(idp = %self.options.name, issuer = %self.options.issuer, "discovery fetched");
        Ok(Document {
            metadata,
            revocation,
            token_endpoint,
            jwks_uri,
            fetched: Instant::now(),
        })
    }

    /// The `refresh_token` grant.
    pub async fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<IssuedToken, IdpError> {
        self.options.check_audience(audience, Grant::RefreshToken)?;
        self.guarded(async {
            let discovered = self.client().await?;
            let _permit = self.permit().await?;
            let token = RefreshToken::new(refresh_token.expose().to_owned());
            let mut request = discovered
                .client
                .exchange_refresh_token(&token)
                .map_err(|e| self.unavailable(e.to_string()))?
                .add_scopes(scopes.iter().map(|s| Scope::new(s.to_owned())));
            if let Some(audience) = audience {
                request = request
                    .add_extra_param(self.options.audience_parameter.name(), audience.to_owned());
            }
            self.grant(
                "refresh_token",
                "Invalid refresh token",
                self.options.refresh_timeout(),
                request.request_async(&self.refresh_http),
            )
            .await
        })
        .await
    }

    /// The `client_credentials` grant: a token for DIRAC itself.
    pub async fn client_credentials(
        &self,
        scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<IssuedToken, IdpError> {
        self.options
            .check_audience(audience, Grant::ClientCredentials)?;
        self.guarded(async {
            let discovered = self.client().await?;
            let _permit = self.permit().await?;
            let mut request = discovered
                .client
                .exchange_client_credentials()
                .map_err(|e| self.unavailable(e.to_string()))?
                .add_scopes(scopes.iter().map(|s| Scope::new(s.to_owned())));
            if let Some(audience) = audience {
                request = request
                    .add_extra_param(self.options.audience_parameter.name(), audience.to_owned());
            }
            self.grant(
                "client_credentials",
                "Cannot fetch access token",
                self.options.timeout,
                request.request_async(&self.http),
            )
            .await
        })
        .await
    }

    /// An RFC 8693 token exchange: `subject_token` (an access token this service obtained) for
    /// one narrowed to `audience` and `scopes`. A plain form POST (the openidconnect crate has
    /// no such request), bounded, counted and backed off like the other grants. Nothing is
    /// consumed, so every failure is an error of this call only: a refusal (the subject token's
    /// `invalid_grant` included) is [`IdpError::ExchangeRefused`], a lost reply unavailable.
    pub async fn token_exchange(
        &self,
        subject_token: &Secret,
        scopes: &ScopeSet,
        audience: &str,
    ) -> Result<IssuedToken, IdpError> {
        self.options
            .check_audience(Some(audience), Grant::TokenExchange)?;
        self.guarded(async {
            let discovered = self.client().await?;
            let Some(url) = discovered.document.token_endpoint.clone() else {
                return Err(self.unavailable("the IdP advertises no token endpoint"));
            };
            let _permit = self.permit().await?;
            let scope = scopes.to_string();
            let mut form = vec![
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("subject_token", subject_token.expose()),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
                (self.options.audience_parameter.name(), audience),
            ];
            if !scopes.is_empty() {
                form.push(("scope", &scope));
            }
            let request = self.http.post(&url).header("Accept", "application/json");
            let request = self.authenticated(request, &mut form);
            let started = Instant::now();
            let result = self
                .bounded(self.options.timeout, async {
                    let response = request.form(&form).send().await?;
                    let status = response.status();
                    Ok::<_, reqwest::Error>((status, response.bytes().await?))
                })
                .await
                .and_then(|sent| {
                    sent.map_err(|error| {
                        self.discovery_is_due();
                        // Nothing was consumed: a lost reply is one more unavailable IdP.
                        if error.is_timeout() {
                            self.unavailable("timed out")
                        } else {
                            self.unavailable(format!("token exchange: {error}"))
                        }
                    })
                })
                .and_then(|(status, body)| self.exchanged(status, &body));
            self.observe("token_exchange", started, &result);
            result
        })
        .await
    }

    /// Client authentication as the IdP's other grants use it (`token_endpoint_auth_method`):
    /// the secret in the body, or HTTP Basic with the form-encoded id and secret (RFC 6749
    /// §2.3.1, as the openidconnect crate sends them).
    fn authenticated<'a>(
        &'a self,
        request: reqwest::RequestBuilder,
        form: &mut Vec<(&'a str, &'a str)>,
    ) -> reqwest::RequestBuilder {
        let secret = self.options.client_secret.as_ref().map(Secret::expose);
        if self.options.secret_in_body {
            form.push(("client_id", &self.options.client_id));
            if let Some(secret) = secret {
                form.push(("client_secret", secret));
            }
            request
        } else {
            request.basic_auth(
                form_encoded(&self.options.client_id),
                secret.map(form_encoded),
            )
        }
    }

    /// Reads a token exchange's reply: the token, or the IdP's refusal sorted.
    fn exchanged(&self, status: reqwest::StatusCode, body: &[u8]) -> Result<IssuedToken, IdpError> {
        let unreadable = || {
            self.unavailable(format!(
                "token exchange: unreadable reply (HTTP {status}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        };
        if status.is_success() {
            // Not quoted: a reply that fails to parse may still hold a token.
            let reply: ExchangeReply = serde_json::from_slice(body).map_err(|error| {
                self.unavailable(format!(
                    "token exchange: unreadable reply ({:?} error at line {} column {})",
                    error.classify(),
                    error.line(),
                    error.column()
                ))
            })?;
            return Ok(IssuedToken {
                access_token: Secret::new(reply.access_token),
                token_type: reply.token_type,
                expires_in: reply.expires_in,
                scope: reply.scope.map(|s| ScopeSet::parse(&s)),
                refresh_token: None,
            });
        }
        let refusal: ExchangeRefusal = match serde_json::from_slice(body) {
            Ok(refusal) if !status.is_server_error() => refusal,
            _ => return Err(unreadable()),
        };
        let description = refusal.error_description.unwrap_or_default();
        if refusal.error == "server_error" || refusal.error == "temporarily_unavailable" {
            return Err(self.unavailable(format!("{}: {description}", refusal.error)));
        }
        Err(IdpError::ExchangeRefused {
            idp: self.options.name.clone(),
            error: refusal.error,
            description,
        })
    }

    /// Runs one token-endpoint exchange within `timeout`, classifies a refusal (DIRAC's
    /// `context` prefixes its message), counts and times it.
    async fn grant(
        &self,
        grant: &'static str,
        context: &'static str,
        timeout: Duration,
        exchange: impl Future<Output = Result<CoreTokenResponse, TokenError>>,
    ) -> Result<IssuedToken, IdpError> {
        let started = Instant::now();
        let result = self
            .bounded(timeout, exchange)
            .await
            .and_then(|response| response.map(issued).map_err(|e| self.classify(e, context)));
        self.observe(grant, started, &result);
        result
    }

    /// RFC 7009 revocation of a refresh token. Like DIRAC, a refusal by the IdP is not an error of
    /// the caller's; the caller logs it. A plain form POST: oauth2's typed request insists on an
    /// https endpoint, which loopback test IdPs do not have.
    pub async fn revoke(&self, refresh_token: &Secret) -> Result<(), IdpError> {
        let discovered = self.client().await?;
        let Some(url) = discovered.document.revocation.clone() else {
            return Err(self.unavailable("the IdP advertises no revocation endpoint"));
        };
        let _permit = self.permit().await?;
        let mut form = vec![
            ("token", refresh_token.expose()),
            ("token_type_hint", "refresh_token"),
        ];
        let mut request = self
            .http
            .post(url.as_str())
            .header("Accept", "application/json");
        let secret = self.options.client_secret.as_ref().map(Secret::expose);
        if self.options.secret_in_body {
            form.push(("client_id", &self.options.client_id));
            if let Some(secret) = secret {
                form.push(("client_secret", secret));
            }
        } else {
            request = request.basic_auth(&self.options.client_id, secret);
        }
        let started = Instant::now();
        let result = self
            .bounded(self.options.timeout, request.form(&form).send())
            .await
            .and_then(|sent| sent.map_err(|e| self.unavailable(format!("revocation: {e}"))))
            .and_then(|response| {
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(self.unavailable(format!("revocation answered {}", response.status())))
                }
            });
        self.observe("revocation", started, &result);
        result
    }

    /// Counts and times one request to the IdP.
    fn observe<T>(&self, grant: &str, started: Instant, result: &Result<T, IdpError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(IdpError::InvalidGrant(_)) => "invalid_grant",
            Err(
                IdpError::Refused { .. }
                | IdpError::ExchangeRefused { .. }
                | IdpError::AudienceNotAllowed { .. },
            ) => "refused",
            Err(IdpError::ReplyLost { .. }) => "reply_lost",
            Err(IdpError::Unavailable { .. } | IdpError::Config { .. }) => "unavailable",
        };
        let idp = self.options.name.as_str();
        self.metrics
            .idp_requests
            .with_label_values(&[idp, grant, outcome])
            .inc();
        self.metrics
            .idp_request_duration
            .with_label_values(&[idp, grant])
            .observe(started.elapsed().as_secs_f64());
    }

    /// A place among the requests in flight to this IdP (`max_in_flight`).
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, IdpError> {
        self.in_flight
            .acquire()
            .await
            .map_err(|_| self.unavailable("shutting down"))
    }

    /// The total timeout again around the whole exchange (reqwest's covers each request).
    async fn bounded<T>(
        &self,
        timeout: Duration,
        exchange: impl Future<Output = T>,
    ) -> Result<T, IdpError> {
        tokio::time::timeout(timeout + Duration::from_secs(1), exchange)
            .await
            .map_err(|_| self.unavailable("timed out"))
    }

    fn classify(&self, error: TokenError, context: &'static str) -> IdpError {
        match error {
            RequestTokenError::ServerResponse(response) => {
                let description = response.error_description().cloned().unwrap_or_default();
                match response.error() {
                    CoreErrorResponseType::InvalidGrant => IdpError::InvalidGrant(description),
                    CoreErrorResponseType::Extension(code)
                        if code == "server_error" || code == "temporarily_unavailable" =>
                    {
                        self.unavailable(format!("{code}: {description}"))
                    }
                    other => IdpError::Refused {
                        context,
                        error: other.to_string(),
                        description,
                    },
                }
            }
            RequestTokenError::Request(HttpClientError::Reqwest(error)) => {
                self.discovery_is_due();
                if error.is_timeout() {
                    self.unavailable("timed out")
                } else if error.is_connect() {
                    self.unavailable(format!("cannot connect: {error}"))
                } else {
                    IdpError::ReplyLost {
                        idp: self.options.name.clone(),
                        reason: error.to_string(),
                    }
                }
            }
            RequestTokenError::Request(other) => self.unavailable(other.to_string()),
            // A non-JSON or empty error body: an HTML 5xx page, a proxy's error.
            RequestTokenError::Parse(_, body) => self.unavailable(format!(
                "unreadable reply: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            RequestTokenError::Other(reason) => self.unavailable(reason),
        }
    }
}

/// RFC 8693's grant type and the token type of what is exchanged and asked for.
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A token exchange's reply (RFC 8693 §2.2.1); `issued_token_type` is not checked: only an
/// access token was asked for.
#[derive(Deserialize)]
struct ExchangeReply {
    access_token: String,
    token_type: String,
    expires_in: Option<i64>,
    scope: Option<String>,
}

/// An OAuth error reply (RFC 6749 §5.2).
#[derive(Deserialize)]
struct ExchangeRefusal {
    error: String,
    error_description: Option<String>,
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(byte as char);
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn issued(response: CoreTokenResponse) -> IssuedToken {
    IssuedToken {
        access_token: Secret::new(response.access_token().secret().to_owned()),
        token_type: match response.token_type() {
            openidconnect::core::CoreTokenType::Bearer => "Bearer".to_owned(),
            other => format!("{other:?}"),
        },
        expires_in: response.expires_in().map(|d| d.as_secs() as i64),
        scope: response
            .scopes()
            .map(|scopes| ScopeSet::from_items(scopes.iter().map(|s| s.as_str()))),
        refresh_token: response
            .refresh_token()
            .map(|t| Secret::new(t.secret().to_owned())),
    }
}
