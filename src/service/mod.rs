//! The protocol-free service: every TokenManager method, authorized with the one rule set and
//! run with its arguments decoded into one typed struct ([`Arguments`]). Protocol front-ends
//! decode their requests into a [`CallContext`] and arguments, and encode the `Result`: the JSON
//! API through [`Service::call`], DIRAC's protocols (which authorize before reading arguments)
//! through [`Service::check_access`], [`Access::positional`] and [`Service::run`]. Failures carry
//! an [`ErrorCode`].

mod args;
mod audit;
mod credential_gauges;
mod error;
mod get_token;
mod methods;
mod system;
mod token_info;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use serde_json::{Map, Value, json};
use thiserror::Error;

pub use args::{
    Arguments, DeleteTokenArgs, EchoArgs, GetTokenArgs, GetTokenAuditArgs, GetTokensByUserIdArgs,
    GetUsersTokensInfoArgs, RefreshConfigurationArgs, UpdateTokenArgs,
};
pub use error::{ErrorCode, MethodError, markdown_table};
pub use methods::{Method, Param, ParamKind};

use crate::actors::audit::{AuditTrail, HandoutKey};
use crate::actors::change_feed::ChangeFeed;
use crate::actors::db::{Database, DbOperation};
use crate::actors::tokens::{RefreshAheadPolicy, TokenBroker};
use crate::config::{self, ConfigError, Settings};
use crate::configuration_server::{RemoteCfg, RemoteError, RemoteSource};
use crate::crypto::{CryptoError, SharedKeyring};
use crate::db::{DbError, StoredToken};
use crate::domain::audit::{AuditKind, AuditRecord, Protocol};
use crate::domain::policy::{self, Authorized, CallerKind, ExtraCredentials, Peer};
use crate::domain::{NewToken, unix_now};
use crate::idp::{IdpError, IdpRegistry};
use crate::metrics::Metrics;
use crate::x509::identity::ChainIdentity;
use crate::x509::tls::TlsError;

/// One call as a protocol front-end decoded it.
#[derive(Clone, Debug, Default)]
pub struct CallContext {
    /// What the transport read from the caller's verified certificate chain
    /// (docs/DIRAC.md#callers-with-a-certificate).
    /// Shared with the connection, which analysed the chain once for all its requests.
    pub certificate: Option<Arc<ChainIdentity>>,
    /// A verified IdP-issued bearer token (HTTPS only); it identifies the caller when present.
    pub bearer: Option<BearerCaller>,
    pub extra_credentials: ExtraCredentials,
    pub ip: Option<IpAddr>,
    /// How the call came, for the audit trail.
    pub protocol: Protocol,
}

/// A call [`Service::check_access`] allowed, before its arguments are read: the method it was
/// checked for, the caller as authorized and the settings that judged it. Outside this module
/// only [`Access::positional`] turns it into a [`Call`], decoding the arguments of that same
/// method, so a call cannot run with an access checked for another method.
pub struct Access {
    method: Option<Method>,
    caller: Authorized,
    settings: Arc<Settings>,
}

impl Access {
    /// The method the access was checked for; None for a name the service does not have.
    pub fn method(&self) -> Option<Method> {
        self.method
    }

    /// The call with DIRAC's positional arguments decoded for the checked method; the error is
    /// DIRAC's message for arguments (or a method) it would refuse.
    pub fn positional(self, args: Vec<Value>) -> Result<Call, MethodError> {
        let Some(method) = self.method else {
            return Err(MethodError::new(ErrorCode::UnknownMethod, "Unknown method"));
        };
        let args = method
            .positional(args)
            .map_err(|message| MethodError::new(ErrorCode::BadArgument, message))?;
        Ok(Call { access: self, args })
    }
}

/// An allowed call with its decoded arguments, ready for [`Service::run`]: the arguments are of
/// the method the access was checked for.
pub struct Call {
    access: Access,
    args: Arguments,
}

/// A caller identified by a bearer token (docs/DIRAC.md#callers-with-a-bearer-token): DN
/// `/O=DIRAC/CN=<sub>`, groups from its scopes.
#[derive(Clone, Debug)]
pub struct BearerCaller {
    pub id: String,
    pub dn: String,
    pub groups: Vec<String>,
}

/// Called after a configuration reload was validated, to apply it elsewhere (TLS contexts): it
/// prepares what the new settings need and returns what puts it in force. Returning an error
/// refuses the whole reload.
pub type ReloadHook =
    Box<dyn Fn(&Settings) -> Result<Box<dyn FnOnce() + Send>, TlsError> + Send + Sync>;

/// Why a reload was refused; the configuration in force stays. Each message is its cause's, so
/// that it names the file or option at fault.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Idp(#[from] IdpError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Keyring(#[from] CryptoError),
    #[error(transparent)]
    ConfigurationServer(#[from] RemoteError),
}

pub struct Service {
    database: Database,
    idps: RwLock<Arc<IdpRegistry>>,
    broker: TokenBroker,
    keyring: Arc<SharedKeyring>,
    settings: RwLock<Arc<Settings>>,
    config_files: Vec<PathBuf>,
    started: SystemTime,
    reload_hooks: Mutex<Vec<ReloadHook>>,
    /// The Configuration Server, when the local files name one, and what it last sent.
    remote_source: OnceLock<RemoteSource>,
    remote: RwLock<Option<RemoteCfg>>,
    metrics: Arc<Metrics>,
    /// Set when a stop begins: `/readyz` says 503 from then on.
    stopping: std::sync::atomic::AtomicBool,
    /// Woken by each credential write of this process: the stored-credential gauges are
    /// counted again.
    credentials_changed: tokio::sync::Notify,
    /// When the stored-credential gauges were last counted (in the background).
    gauges_counted: Mutex<Option<std::time::Instant>>,
}

impl Service {
    /// The service on `database`, counting what it does in `metrics`; `config_files` are read
    /// again on reload.
    pub fn new(
        database: Database,
        keyring: Arc<SharedKeyring>,
        settings: Settings,
        config_files: Vec<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, IdpError> {
        let idps = IdpRegistry::from_settings(&settings, &metrics)?;
        let shared_database = settings.database.backend() != config::Backend::Sqlite;
        let broker = TokenBroker::new(
            database.clone(),
            settings.service.refresh_actor_idle_time,
            shared_database,
            settings.service.max_staleness,
            settings
                .service
                .refresh_ahead_percent
                .map(|percent_left| RefreshAheadPolicy { percent_left }),
            settings.service.audit.enabled,
            metrics.clone(),
        );
        Ok(Arc::new(Self {
            idps: RwLock::new(Arc::new(idps)),
            broker,
            database,
            keyring,
            settings: RwLock::new(Arc::new(settings)),
            config_files,
            started: SystemTime::now(),
            reload_hooks: Mutex::new(Vec::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            credentials_changed: tokio::sync::Notify::new(),
            gauges_counted: Mutex::new(None),
            remote_source: OnceLock::new(),
            remote: RwLock::new(None),
            metrics,
        }))
    }

    /// Identifies a bearer-token caller: the token must verify with the keys of the IdP whose
    /// issuer it names; its scopes give its DIRAC groups (DIRAC's getScopeGroups).
    pub async fn bearer_caller(&self, token: &str) -> Result<BearerCaller, MethodError> {
        let identity = self.idps().verify_bearer(token).await.map_err(|error| {
            tracing::info!(%error, "bearer token refused");
            MethodError::new(ErrorCode::InvalidBearerToken, error.to_string())
        })?;
        let settings = self.settings();
        let registry = &settings.registry;
        let groups = registry
            .groups()
            .iter()
            .filter(|group| {
                let implied = crate::domain::scopes::group_scopes(
                    identity.provider_type,
                    &group.name,
                    group.idp_role.as_deref(),
                    registry.vo_for_group(&group.name),
                );
                !implied.is_empty() && implied.iter().all(|s| identity.scopes.contains(s))
            })
            .map(|group| group.name.clone())
            .collect();
        Ok(BearerCaller {
            dn: format!("{}{}", crate::domain::registry::ID_DN_PREFIX, identity.sub),
            id: identity.sub,
            groups,
        })
    }

    fn idps(&self) -> Arc<IdpRegistry> {
        self.idps.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// This process's audit trail.
    pub fn audit(&self) -> &AuditTrail {
        self.broker.audit()
    }

    /// A stop has begun: the service is no longer ready for new calls.
    pub fn begin_stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns at the next credential write of this process.
    pub async fn credentials_changed(&self) {
        self.credentials_changed.notified().await;
    }

    /// Starts applying the changes the database announces to the token cache, until the
    /// returned feed is dropped.
    pub fn follow_changes(&self) -> Result<ChangeFeed, DbError> {
        ChangeFeed::start(&self.settings().database, self.broker.cache_sync())
    }

    /// Publishes the change feed's state and the audit records waiting (read at scrape).
    pub fn export_change_feed_state(&self) {
        self.metrics
            .audit_pending
            .set(self.audit().pending() as i64);
        let state = self.broker.sync_state();
        self.metrics
            .change_sync_age
            .set(state.age().map_or(-1.0, |age| age.as_secs_f64()));
        self.metrics
            .change_feed_fallback
            .set(i64::from(!state.in_step()));
    }

    /// This process as the owner of refresh leases.
    pub fn lease_owner(&self) -> &str {
        self.broker.lease_owner()
    }

    /// At start: voids the refresh leases of processes that are gone, logging how many.
    pub async fn void_leases_of_gone_processes(&self) {
        match self.broker.void_leases_of_gone_processes().await {
            Ok(0) => {}
            Ok(voided) => tracing::warn!(
                voided,
                "voided the refresh leases of processes that are gone (killed during a refresh?)"
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot void the refresh leases of processes that are gone")
            }
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn add_reload_hook(&self, hook: ReloadHook) {
        self.reload_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Re-reads the configuration files and the keyring. A configuration that does not load, or
    /// that a hook refuses (a certificate that does not read), is refused whole: the settings in
    /// force stay.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = self.try_reload();
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        result
    }

    /// Uses a Configuration Server from now on: `fetched` is what start-up read from it.
    pub fn set_remote(&self, source: RemoteSource, fetched: Option<RemoteCfg>) {
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = fetched;
        let _ = self.remote_source.set(source);
    }

    /// How often the Configuration Server is polled, when there is one.
    pub fn remote_refresh_time(&self) -> Option<std::time::Duration> {
        self.remote_source.get().map(RemoteSource::refresh_time)
    }

    /// Asks the Configuration Server for a newer version (its master first with `from_master`)
    /// and applies it; true when a new version is in force. A version whose configuration does
    /// not load is refused whole, as a broken local file is, and asked for again next time.
    pub async fn refresh_remote(&self, from_master: bool) -> Result<bool, ReloadError> {
        let Some(source) = self.remote_source.get() else {
            return Ok(false);
        };
        let (known, master) = {
            let remote = self.remote.read().unwrap_or_else(|e| e.into_inner());
            let known = remote.as_ref().map(|r| r.version.clone());
            let master = remote
                .as_ref()
                .filter(|_| from_master)
                .and_then(|r| r.section.get("/DIRAC/Configuration/MasterServer"))
                .map(str::to_owned);
            (known, master)
        };
        let fetched = source
            .fetch_if_newer(known.as_deref(), master.as_deref())
            .await?;
        let Some(fetched) = fetched else {
            return Ok(false);
        };
        let result = self.try_reload_over(Some(&fetched.section));
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        result?;
        tracing::info!(version = %fetched.version, server = %fetched.server, "configuration from the Configuration Server in force");
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = Some(fetched);
        Ok(true)
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let remote = self
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.try_reload_over(remote.as_ref().map(|r| &r.section))
    }

    fn try_reload_over(&self, remote: Option<&config::Section>) -> Result<(), ReloadError> {
        let loaded = config::load_over(&self.config_files, remote)?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let idps = IdpRegistry::from_settings(&loaded.settings, &self.metrics)?;
        let hooks = self.reload_hooks.lock().unwrap_or_else(|e| e.into_inner());
        let commits = hooks
            .iter()
            .map(|hook| hook(&loaded.settings))
            .collect::<Result<Vec<_>, _>>()?;
        let keyring = self
            .keyring
            .reload_from(&loaded.settings.service.encryption_key_file)?;
        for commit in commits {
            commit();
        }
        *self.idps.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(idps);
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded.settings);
        tracing::info!(
            newest_key = keyring.newest_key_id(),
            "configuration and keyring reloaded"
        );
        Ok(())
    }

    /// Authorizes a call before its arguments are read, as DIRAC's protocols do: DISET at the
    /// proposal, HTTPS before decoding `args`. `name` is what the caller asked for, so that a
    /// method we do not have is judged by the `Default` rule, as DIRAC judges it.
    pub fn check_access(&self, context: &CallContext, name: &str) -> Result<Access, MethodError> {
        let settings = self.settings();
        let method = Method::from_name(name);
        let caller = self.authorize(
            &settings,
            context,
            name,
            method.and_then(Method::hardcoded_rule),
        )?;
        Ok(Access {
            method,
            caller,
            settings,
        })
    }

    /// Authorizes and runs one call whose arguments were decoded first (the JSON API).
    pub async fn call(&self, context: &CallContext, args: Arguments) -> Result<Value, MethodError> {
        let access = self.check_access(context, args.method().name())?;
        self.run(context, Call { access, args }).await
    }

    /// Runs a call [`Service::check_access`] allowed, with the rules and settings it judged by.
    pub async fn run(&self, context: &CallContext, call: Call) -> Result<Value, MethodError> {
        let Call {
            access: Access {
                caller, settings, ..
            },
            args,
        } = call;
        match args {
            Arguments::GetToken(args) => {
                let mut handout = HandoutKey {
                    caller: caller.dn.clone(),
                    caller_group: Some(caller.group.clone()),
                    on_behalf_of: args.username.clone(),
                    provider: args.provider.clone(),
                    audience: args.audience.clone(),
                    protocol: context.protocol,
                    ..HandoutKey::default()
                };
                let result = get_token::get_token(
                    &settings,
                    &self.idps(),
                    &self.broker,
                    &caller,
                    args,
                    &mut handout,
                )
                .await;
                handout.outcome = outcome(&result);
                self.audit().handout(handout, context.ip);
                result
            }
            Arguments::Ping => Ok(system::ping(self.started, &settings.service.name)),
            Arguments::Echo(EchoArgs { data }) => Ok(data),
            Arguments::Whoami => Ok(whoami(context, &caller, &settings)),
            Arguments::UpdateToken(args) => {
                let change = change_record(
                    AuditKind::Update,
                    context,
                    &caller,
                    &args.user_id,
                    Some(&args.provider),
                );
                let result = self.update_token(&settings, context, &caller, args).await;
                self.audit().record(AuditRecord {
                    outcome: outcome(&result).to_owned(),
                    ..change
                });
                result
            }
            Arguments::DeleteToken(DeleteTokenArgs { user_id }) => {
                let change = change_record(AuditKind::Delete, context, &caller, &user_id, None);
                let result = self
                    .delete_token(&settings, context, &caller, user_id)
                    .await;
                self.audit().record(AuditRecord {
                    outcome: outcome(&result).to_owned(),
                    ..change
                });
                result
            }
            Arguments::GetTokenAudit(args) => {
                self.token_audit(&settings, context, &caller, args).await
            }
            Arguments::GetTokensByUserId(GetTokensByUserIdArgs { user_id }) => {
                self.check_own_or_allowed(
                    &settings,
                    context,
                    &caller,
                    GetTokensByUserIdArgs::OTHER_USERS_RULE,
                    &user_id,
                )?;
                let tokens = self.tokens_of(&user_id).await?;
                Ok(token_info::list(&tokens, None, expose(&settings, &caller)))
            }
            Arguments::GetUserTokensInfo => {
                let ids = user_ids(&settings, &caller.username)?;
                let mut infos = Vec::new();
                for id in ids {
                    let tokens = self.tokens_of(id).await?;
                    infos.extend(token_info::items(&tokens, None, expose(&settings, &caller)));
                }
                Ok(Value::Array(infos))
            }
            Arguments::GetUsersTokensInfo(GetUsersTokensInfoArgs { users }) => {
                let mut infos = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for user in &users {
                    for id in user_ids(&settings, user)? {
                        let tokens = self.tokens_of(id).await?;
                        let fresh: Vec<StoredToken> =
                            tokens.into_iter().filter(|t| seen.insert(t.id)).collect();
                        infos.extend(token_info::items(
                            &fresh,
                            Some(user),
                            expose(&settings, &caller),
                        ));
                    }
                }
                Ok(Value::Array(infos))
            }
            Arguments::RefreshConfiguration(RefreshConfigurationArgs { from_master }) => {
                let rejected = |error: ReloadError| {
                    tracing::warn!(%error, "refreshConfiguration: the new configuration is refused");
                    MethodError::new(ErrorCode::ConfigRejected, error.to_string())
                };
                // A new CS version is applied by the refresh itself; otherwise the local files
                // are read again.
                let refreshed = self.refresh_remote(from_master).await.map_err(rejected)?;
                if !refreshed {
                    self.reload().map_err(rejected)?;
                }
                Ok(Value::Null)
            }
        }
    }

    fn authorize(
        &self,
        settings: &Settings,
        context: &CallContext,
        rule_name: &str,
        hardcoded: Option<&'static [&'static str]>,
    ) -> Result<Authorized, MethodError> {
        let rules = policy::rules_for(rule_name, hardcoded, &settings.service.authorization);
        let certificate = context.certificate.as_ref();
        let peer = match &context.bearer {
            Some(bearer) => Peer {
                dn: Some(bearer.dn.as_str()),
                group: bearer.groups.first().map(String::as_str),
                extra: ExtraCredentials::None,
                ip: context.ip,
                limited_proxy: false,
            },
            None => Peer {
                dn: certificate.map(|c| c.dn.as_str()),
                group: certificate.and_then(|c| c.group_extension.as_deref()),
                extra: context.extra_credentials.clone(),
                ip: context.ip,
                limited_proxy: certificate.is_some_and(|c| c.is_limited_proxy),
            },
        };
        policy::authorize(&rules, &peer, &settings.registry).map_err(|denied| {
            tracing::info!(method = rule_name, dn = ?peer.dn, reason = ?denied, "refused");
            MethodError::Unauthorized(denied)
        })
    }

    /// On purpose stricter than DIRAC: acting on another user's ID needs the method's
    /// `<method>ForOtherUsers` rule (default ProxyManagement).
    fn check_own_or_allowed(
        &self,
        settings: &Settings,
        context: &CallContext,
        caller: &Authorized,
        other_users_rule: &str,
        user_id: &str,
    ) -> Result<(), MethodError> {
        let own = caller.kind == CallerKind::User
            && settings
                .registry
                .id_dns_for_user(&caller.username)
                .contains(&user_id);
        if own {
            return Ok(());
        }
        self.authorize(
            settings,
            context,
            other_users_rule,
            Some(&["ProxyManagement"]),
        )
        .map(|_| ())
        .map_err(|_| MethodError::new(ErrorCode::Forbidden, "You aren't allowed!"))
    }

    async fn update_token(
        &self,
        settings: &Settings,
        context: &CallContext,
        caller: &Authorized,
        args: UpdateTokenArgs,
    ) -> Result<Value, MethodError> {
        let UpdateTokenArgs {
            token: dict,
            user_id,
            provider,
            refresh_lifetime,
        } = args;
        let (user_id, provider) = (user_id.as_str(), provider.as_str());
        self.check_own_or_allowed(
            settings,
            context,
            caller,
            UpdateTokenArgs::OTHER_USERS_RULE,
            user_id,
        )?;
        if settings.idp(provider).is_none() {
            return Err(MethodError::new(
                ErrorCode::UnknownProvider,
                format!(
                    "Path /Resources/IdProviders/{provider} does not exist or it's not a section"
                ),
            ));
        }
        let now = unix_now();
        let token = NewToken::from_dirac_dict(&dict, user_id, provider, refresh_lifetime, now)?;
        let new_refresh_token = token.refresh_token.clone();
        let replaced = self
            .database
            .run(DbOperation::UpdateToken, move |store, conn| {
                store.update_token(conn, &token, now)
            })
            .await?;
        self.broker.forget_user(user_id);
        self.credentials_changed.notify_one();
        // The replaced refresh token is revoked once the new one is stored; a failure is logged.
        if let Some(old) = replaced.filter(|old| old.refresh_token != new_refresh_token)
            && let Some(idp) = self.idps().get(provider).cloned()
        {
            actix::spawn(async move {
                if let Err(error) = idp.revoke(&old.refresh_token).await {
                    tracing::warn!(user_id = %old.user_id, provider = %old.provider, %error,
                        "could not revoke the replaced refresh token");
                }
            });
        }
        let tokens = self.tokens_of(user_id).await?;
        Ok(token_info::list(&tokens, None, expose(settings, caller)))
    }

    async fn delete_token(
        &self,
        settings: &Settings,
        context: &CallContext,
        caller: &Authorized,
        user_id: String,
    ) -> Result<Value, MethodError> {
        self.check_own_or_allowed(
            settings,
            context,
            caller,
            DeleteTokenArgs::OTHER_USERS_RULE,
            &user_id,
        )?;
        let id = user_id.clone();
        self.database
            .run(DbOperation::RemoveTokens, move |store, conn| {
                store.remove_tokens(conn, &id)
            })
            .await?;
        self.broker.forget_user(&user_id);
        self.credentials_changed.notify_one();
        Ok(json!("Token successfully removed"))
    }

    async fn tokens_of(&self, user_id: &str) -> Result<Vec<StoredToken>, MethodError> {
        let user_id = user_id.to_owned();
        Ok(self
            .database
            .run(DbOperation::TokensByUserId, move |store, conn| {
                store.tokens_by_user_id(conn, &user_id)
            })
            .await?)
    }
}

/// The audit record of a credential change a caller asked for; its outcome is set when it ran.
fn change_record(
    kind: AuditKind,
    context: &CallContext,
    caller: &Authorized,
    user_id: &str,
    provider: Option<&str>,
) -> AuditRecord {
    AuditRecord {
        kind,
        caller: caller.dn.clone(),
        caller_group: Some(caller.group.clone()),
        user_id: Some(user_id.to_owned()),
        provider: provider.map(str::to_owned),
        protocol: context.protocol,
        client_addresses: context.ip.into_iter().collect(),
        ..AuditRecord::default()
    }
}

/// A result as the audit trail records it: `ok` or the error code.
fn outcome<T>(result: &Result<T, MethodError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(error) => error.code().as_str(),
    }
}

fn expose(settings: &Settings, caller: &Authorized) -> bool {
    settings.service.expose_token_values && caller.has_property("ProxyManagement")
}

/// DIRAC's getDNForUsername + getIDFromDN: the IdP user IDs of a DIRAC user (none if the user
/// has DNs but no ID DN); a user without DNs is DIRAC's "No DN found" error.
fn user_ids<'s>(settings: &'s Settings, username: &str) -> Result<Vec<&'s str>, MethodError> {
    match settings.registry.user(username) {
        Some(user) if !user.dns.is_empty() => Ok(settings.registry.id_dns_for_user(username)),
        _ => Err(MethodError::new(
            ErrorCode::UnknownUser,
            format!("No DN found for user {username}"),
        )),
    }
}

/// DIRAC's whoami (docs/DIRAC.md#whoami): the credentials dictionary without the chain object.
fn whoami(context: &CallContext, caller: &Authorized, settings: &Settings) -> Value {
    let mut dict = Map::new();
    if let Some(bearer) = &context.bearer {
        dict.insert("ID".into(), json!(bearer.id));
        dict.insert("DN".into(), json!(bearer.dn));
        dict.insert("DIRACGroups".into(), json!(bearer.groups));
        dict.insert("group".into(), json!(caller.group));
        dict.insert("properties".into(), json!(caller.properties));
        dict.insert("username".into(), json!(caller.username));
        return Value::Object(dict);
    }
    if let Some(cert) = &context.certificate {
        dict.insert("subject".into(), json!(cert.subject));
        dict.insert("issuer".into(), json!(cert.issuer));
        dict.insert("secondsLeft".into(), json!(cert.seconds_left));
        dict.insert("isProxy".into(), json!(cert.is_proxy));
        dict.insert("isLimitedProxy".into(), json!(cert.is_limited_proxy));
        dict.insert("validDN".into(), json!(false));
        dict.insert("validGroup".into(), json!(false));
    }
    if let Some(dn) = &caller.dn {
        dict.insert("DN".into(), json!(dn));
    }
    if let Some(identity) = context
        .certificate
        .as_ref()
        .and_then(|c| c.identity.as_ref())
    {
        dict.insert("identity".into(), json!(identity));
    }
    if caller.kind == CallerKind::Host {
        dict.insert("extraCredentials".into(), json!("hosts"));
    }
    dict.insert("group".into(), json!(caller.group));
    if caller.kind == CallerKind::User
        && let Some(vo) = settings.registry.vo_for_group(&caller.group)
    {
        dict.insert("VO".into(), json!(vo));
    }
    dict.insert("properties".into(), json!(caller.properties));
    dict.insert("username".into(), json!(caller.username));
    if let Some(host) = &caller.forwarded_by {
        dict.insert("forwardedBy".into(), json!(host));
    }
    Value::Object(dict)
}
