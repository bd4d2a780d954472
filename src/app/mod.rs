//! The application root: builds the service from its settings and owns everything `serve` runs —
//! the three listeners, the actors behind them and the background tasks — so that one place can
//! report the bound ports, reload, and stop them all.

mod database_watch;
mod demo;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::actors::change_feed::ChangeFeed;
use crate::actors::db::Database;
use crate::actors::liveness::LivenessLock;
use crate::config::{self, Backend, ConfigError, DatabaseUrl, Settings};
use crate::configuration_server::{RemoteCfg, RemoteError, RemoteSource};
use crate::crypto::{CryptoError, KeyringFile, SharedKeyring};
use crate::db::{DbError, LockError, PoolOptions, SqliteServeLock};
use crate::http;
use crate::metrics::Metrics;
use crate::protocol::dirac::diset;
use crate::service::{ErrorCode, ReloadError, Service};
use crate::transport::admission::{Admission, Front, Limits};
use crate::transport::serve::{Workers, WorkersHandle};
use crate::transport::{
    self, descriptors,
    tls::{Listener, ReloadableTls},
};
use crate::x509::expiry;

/// How long start-up waits for the database before giving up with its error.
const DATABASE_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum AppError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("Configuration Server: {0}")]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the database did not answer within {0:?}")]
    DatabaseTimeout(Duration),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Idp(#[from] crate::idp::IdpError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Where the configuration came from, for reloads: the local files, and the Configuration
/// Server when they name one (with what start-up fetched from it).
pub struct ConfigSources {
    pub files: Vec<PathBuf>,
    pub remote: Option<(RemoteSource, Option<RemoteCfg>)>,
}

impl ConfigSources {
    /// The settings `serve` runs on, read from `files`: when they name a Configuration Server,
    /// its CFG is fetched first and the local files are merged over it; start-up fails if no
    /// server answers, as a DIRAC service without its CS does.
    pub async fn load(files: &[PathBuf]) -> Result<(Settings, Self), AppError> {
        let local = config::Section::load_files(files).map_err(ConfigError::from)?;
        let remote = match RemoteSource::from_local(&local)? {
            Some(source) => {
                let fetched = source.fetch_if_newer(None, None).await?;
                if let Some(fetched) = &fetched {
                    tracing::info!(version = %fetched.version, server = %fetched.server, "configuration fetched from the Configuration Server");
                }
                Some((source, fetched))
            }
            None => None,
        };
        let fetched = remote.as_ref().and_then(|(_, fetched)| fetched.as_ref());
        let loaded = config::load_over(files, fetched.map(|f| &f.section))?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let sources = Self {
            files: files.to_vec(),
            remote,
        };
        Ok((loaded.settings, sources))
    }
}

/// The ports the listeners are bound to (port 0 in the settings picks a free one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub https: u16,
    pub dips: u16,
    pub metrics: u16,
}

/// A built service, listening; [`Application::run`] serves until [`AppHandle::stop`].
pub struct Application {
    ports: Ports,
    handle: AppHandle,
    /// Held for the process's life: a second `serve` on the same SQLite file is refused.
    _sqlite_lock: Option<SqliteServeLock>,
    /// Held for the process's life on PostgreSQL and MariaDB: while it is, other replicas leave
    /// this process's refresh leases alone.
    _liveness_lock: Option<LivenessLock>,
    /// Applies the changes the database announces to the token cache while it lives.
    _change_feed: ChangeFeed,
}

/// What outlives the borrow of an [`Application`]: reload and stop it from elsewhere (signal
/// handlers, tests).
#[derive(Clone)]
pub struct AppHandle {
    service: Arc<Service>,
    workers: WorkersHandle,
    background: Arc<[tokio::task::AbortHandle]>,
    /// Set by the first stop: when the audit trail's last write must be done.
    audit_deadline: Arc<Mutex<Option<Instant>>>,
}

impl Application {
    /// Opens the keyring and the database (migrations applied), binds the listeners and starts
    /// the servers, the actors and the background tasks, with its metrics registered in
    /// `registry` (which its metrics port serves). Needs a running actix system.
    pub async fn build(
        settings: Settings,
        sources: ConfigSources,
        registry: prometheus::Registry,
    ) -> Result<Self, AppError> {
        let method_names = crate::service::Method::ALL.map(|m| m.name());
        let common_errors = ErrorCode::COMMON.map(ErrorCode::as_str);
        let idp_names: Vec<&str> = settings.idps.iter().map(|idp| idp.name()).collect();
        let metrics = Arc::new(Metrics::register(
            registry,
            &method_names,
            &common_errors,
            &idp_names,
        )?);
        let keyring = open_keyring(&settings)?;
        if settings.service.generate_demo_credentials {
            demo::generate_pki(&settings)?;
        }
        let tls_error = |e: crate::x509::tls::TlsError| AppError::Tls(e.to_string());
        let tls = ReloadableTls::new(&settings, Listener::Https).map_err(tls_error)?;
        let diset_tls =
            Arc::new(ReloadableTls::new(&settings, Listener::Diset).map_err(tls_error)?);
        let url = &settings.database;
        let sqlite_lock = match url.sqlite_path() {
            Some(path) => {
                let lock = SqliteServeLock::acquire(Path::new(path))?;
                tracing::debug!(lock = %lock.path().display(), "holding the SQLite serve lock");
                Some(lock)
            }
            None => None,
        };
        let options = PoolOptions {
            max_size: settings.service.database_pool_size,
            deadline: settings.service.database_deadline,
            ..Default::default()
        };
        let database = open_database(url, keyring.clone(), options, metrics.clone()).await?;
        let applied = database.migrate().await?;
        tracing::info!(database = %url.masked(), migrations_applied = applied.len(), "database ready");

        let listeners = Listeners::bind(&settings)?;
        let ports = listeners.ports();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let url = url.clone();
        let service = Service::new(database, keyring, settings, sources.files, metrics.clone())?;
        // Before the first lease: other replicas take over the leases of an owner without it.
        let liveness_lock = if url.backend() == Backend::Sqlite {
            None
        } else {
            let owner = service.lease_owner().to_owned();
            let (database, metrics) = (service.database().clone(), metrics.clone());
            let held = tokio::task::spawn_blocking(move || {
                LivenessLock::hold(&url, &owner, database, metrics, DATABASE_WAIT)
            });
            Some(held.await.map_err(|_| DbError::Unavailable)??)
        };
        service.void_leases_of_gone_processes().await;
        let change_feed = service.follow_changes()?;
        let mut background = vec![
            actix_rt::spawn(export_certificate_expiry(service.clone())).abort_handle(),
            actix_rt::spawn(database_watch::watch_database(service.clone())).abort_handle(),
        ];
        let audit = service.settings().service.audit.clone();
        if audit.enabled {
            let trail = service.audit().clone();
            background.push(actix_rt::spawn(trail.write_every(audit.window)).abort_handle());
            if let Some(retention) = audit.retention {
                let trail = service.audit().clone();
                background.push(actix_rt::spawn(trail.purge_every_hour(retention)).abort_handle());
            }
        }
        if let Some((source, fetched)) = sources.remote {
            service.set_remote(source, fetched);
            background
                .push(actix_rt::spawn(poll_configuration_server(service.clone())).abort_handle());
        }
        let admission = Admission::new(connection_limits(&service.settings()), metrics);
        let workers = Workers::start(workers, admission);
        let bind_error = |listener: &str| {
            let address = listener.to_owned();
            move |source| AppError::Bind { address, source }
        };
        let tls = Arc::new(tls);
        workers
            .serve(
                listeners.https,
                Front::Https,
                http::https_connections(service.clone(), tls.clone()),
            )
            .map_err(bind_error("HTTPS listener"))?;
        workers
            .serve(
                listeners.dips,
                Front::Dips,
                diset::connections(service.clone(), diset_tls.clone()),
            )
            .map_err(bind_error("DISET listener"))?;
        workers
            .serve(
                listeners.metrics,
                Front::Metrics,
                http::metrics_connections(service.clone()),
            )
            .map_err(bind_error("metrics listener"))?;
        service.add_reload_hook(Box::new(move |settings| tls.prepare(settings)));
        service.add_reload_hook(Box::new(move |settings| diset_tls.prepare(settings)));
        if service.settings().service.generate_demo_credentials {
            demo::log_command(&service.settings(), ports.https);
        }
        let handle = AppHandle {
            service,
            workers: workers.handle(),
            background: background.into(),
            audit_deadline: Arc::default(),
        };
        Ok(Self {
            ports,
            handle,
            _sqlite_lock: sqlite_lock,
            _liveness_lock: liveness_lock,
            _change_feed: change_feed,
        })
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    pub fn handle(&self) -> AppHandle {
        self.handle.clone()
    }

    /// Serves until [`AppHandle::stop`] has finished.
    pub async fn run(self) -> Result<(), AppError> {
        let Self {
            handle,
            _sqlite_lock,
            _liveness_lock,
            _change_feed,
            ..
        } = self;
        handle.workers.stopped().await;
        handle.close_audit().await;
        tracing::info!("stopped");
        Ok(())
    }
}

impl AppHandle {
    /// Re-reads the configuration files, the keyring and the TLS files; a broken new
    /// configuration is refused and the one in force kept.
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.service.reload()
    }

    /// Stops the listeners and the background tasks; with `graceful`, calls in progress get
    /// `ShutdownGracePeriod` to finish. [`Application::run`] then writes the audit records still
    /// pending within what is left of it (at least `AUDIT_CLOSE_MIN`), and returns.
    pub async fn stop(&self, graceful: bool) {
        let grace = self.service.settings().service.shutdown_grace;
        let audit_deadline = Instant::now() + if graceful { grace } else { Duration::ZERO };
        self.audit_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(audit_deadline);
        self.service.begin_stop();
        for task in self.background.iter() {
            task.abort();
        }
        self.workers.stop(graceful.then_some(grace)).await;
    }

    /// Writes the audit records still pending, by the deadline the stop set.
    async fn close_audit(&self) {
        let deadline = *self
            .audit_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let left = deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        self.service.audit().close(left.max(AUDIT_CLOSE_MIN)).await;
    }
}

/// The least time a stop gives the audit trail's last write, even an immediate stop's.
const AUDIT_CLOSE_MIN: Duration = Duration::from_secs(2);

/// Admission's bounds: the descriptors the soft open-file limit leaves after the reserve go to
/// client connections.
fn connection_limits(settings: &Settings) -> Limits {
    let connections = &settings.service.connections;
    let descriptors = descriptors::soft_limit().unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read the open-file limit; assuming 1024");
        1024
    });
    let reserve = u64::from(connections.descriptor_reserve);
    let budget = descriptors
        .saturating_sub(reserve)
        .max(MIN_CONNECTION_BUDGET);
    if descriptors < reserve + MIN_CONNECTION_BUDGET {
        tracing::warn!(
            open_file_limit = descriptors,
            reserve,
            "the open-file limit leaves almost nothing for clients after DescriptorReserve"
        );
    }
    Limits {
        connections: usize::try_from(budget).unwrap_or(usize::MAX),
        unidentified_per_listener: connections.max_unidentified as usize,
        unidentified_per_address: connections.max_unidentified_per_address as usize,
        handshakes_per_listener: connections.max_handshakes as usize,
    }
}

/// Clients get at least this many connections, whatever the limit and the reserve say.
const MIN_CONNECTION_BUDGET: u64 = 64;

/// The bound sockets of one application.
struct Listeners {
    https: TcpListener,
    dips: TcpListener,
    metrics: TcpListener,
}

impl Listeners {
    fn bind(settings: &Settings) -> Result<Self, AppError> {
        let service = &settings.service;
        let bind = |ip, port| {
            let address = SocketAddr::new(ip, port);
            transport::listen(address).map_err(|source| AppError::Bind {
                address: address.to_string(),
                source,
            })
        };
        Ok(Self {
            https: bind(service.listen_address, service.https_port)?,
            dips: bind(service.listen_address, service.port)?,
            metrics: bind(service.metrics_listen_address, service.metrics_port)?,
        })
    }

    fn ports(&self) -> Ports {
        let port = |listener: &TcpListener| listener.local_addr().map_or(0, |a| a.port());
        Ports {
            https: port(&self.https),
            dips: port(&self.dips),
            metrics: port(&self.metrics),
        }
    }
}

/// How often the certificate files are read for their expiry: they may be replaced on disk
/// before a reload puts them in force.
const CERTIFICATE_EXPIRY_INTERVAL: Duration = Duration::from_secs(300);

/// Publishes when the host certificate and the earliest trusted CA expire, now and every
/// [`CERTIFICATE_EXPIRY_INTERVAL`].
async fn export_certificate_expiry(service: Arc<Service>) {
    let mut ticks = tokio::time::interval(CERTIFICATE_EXPIRY_INTERVAL);
    loop {
        ticks.tick().await;
        let security = service.settings().security.clone();
        let gauge = |certificate| {
            service
                .metrics()
                .certificate_expiry
                .with_label_values(&[certificate])
        };
        if let Some(path) = &security.cert_file {
            match expiry::certificate_file_expiry(path) {
                Ok(at) => gauge("host").set(at),
                Err(error) => tracing::warn!(%error, "cannot read the host certificate's expiry"),
            }
        }
        if let Some(dir) = &security.ca_location {
            match expiry::earliest_ca_expiry(dir) {
                Ok(Some(at)) => gauge("ca").set(at),
                Ok(None) => tracing::warn!(dir = %dir.display(), "no CA certificate in CALocation"),
                Err(error) => tracing::warn!(%error, "cannot read the CAs' expiry"),
            }
        }
    }
}

/// Asks the Configuration Server for a newer version every `RefreshTime`; a failure is logged
/// and the configuration in force kept.
async fn poll_configuration_server(service: Arc<Service>) {
    let Some(period) = service.remote_refresh_time() else {
        return;
    };
    loop {
        tokio::time::sleep(period).await;
        if let Err(error) = service.refresh_remote(false).await {
            tracing::warn!(%error, "configuration not refreshed from the Configuration Server");
        }
    }
}

/// The keyring in force. A missing keyring stops start-up, except for a configuration that asks
/// for throwaway demo credentials (the shipped example), where a first key is generated.
pub fn open_keyring(settings: &Settings) -> Result<Arc<SharedKeyring>, AppError> {
    let path = &settings.service.encryption_key_file;
    if settings.service.generate_demo_credentials && !path.exists() {
        let key_id = KeyringFile::new(path).create()?;
        tracing::warn!(path = %path.display(), key_id, "generated a demo encryption keyring");
    }
    Ok(Arc::new(SharedKeyring::load(path)?))
}

/// Starts the DB actor, counting its operations in `metrics`, and waits until the database
/// answers.
pub async fn open_database(
    url: &DatabaseUrl,
    keyring: Arc<SharedKeyring>,
    options: PoolOptions,
    metrics: Arc<Metrics>,
) -> Result<Database, AppError> {
    let database = Database::open(url, keyring, options, metrics)?;
    // Longer than the pool's connection timeout: a refused login reaches the operator as itself.
    database
        .ping_within(DATABASE_WAIT)
        .await
        .map_err(|error| match error {
            error if error.is_timeout() => AppError::DatabaseTimeout(DATABASE_WAIT),
            error => error.into(),
        })?;
    Ok(database)
}
