use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use super::{CliError, open_database, open_keyring};
use crate::actors::db::Migrate;
use crate::config::Settings;
use crate::configuration_server::{RemoteCfg, RemoteSource};
use crate::db::{PoolOptions, SqliteServeLock};
use crate::http;
use crate::transport::{
    self,
    tls::{Listener, ReloadableTls},
};
use crate::metrics;
use crate::protocol::dirac::diset;
use crate::service::Service;
use crate::x509::pki::{DemoPki, ProxyKind};

/// The bound sockets of one `serve` process. Port 0 in the configuration means "any free port";
/// the ports actually bound are logged in one line that tests and scripts read.
struct Listeners {
    https: TcpListener,
    dips: TcpListener,
    metrics: TcpListener,
}

impl Listeners {
    fn bind(settings: &Settings) -> Result<Self, CliError> {
        let service = &settings.service;
        let bind = |port| {
            let address = SocketAddr::new(service.listen_address, port);
            transport::listen(address).map_err(|source| CliError::Bind {
                address: address.to_string(),
                source,
            })
        };
        Ok(Self {
            https: bind(service.https_port)?,
            dips: bind(service.port)?,
            metrics: bind(service.metrics_port)?,
        })
    }

    fn port(listener: &TcpListener) -> u16 {
        listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

pub async fn run(
    settings: Settings,
    config_files: Vec<PathBuf>,
    remote: Option<(RemoteSource, Option<RemoteCfg>)>,
) -> Result<(), CliError> {
    let method_names = crate::service::Method::ALL.map(|m| m.name());
    let idp_names: Vec<&str> = settings.idps.iter().map(|idp| idp.name()).collect();
    metrics::init(&method_names, &idp_names);
    let keyring = open_keyring(&settings)?;
    if settings.service.generate_demo_credentials {
        generate_demo_pki(&settings)?;
    }
    let tls_error = |e: crate::x509::tls::TlsError| CliError::Tls(e.to_string());
    let tls = ReloadableTls::new(&settings, Listener::Https).map_err(tls_error)?;
    let diset_tls = Arc::new(ReloadableTls::new(&settings, Listener::Diset).map_err(tls_error)?);
    let url = &settings.database;
    let _sqlite_lock = match url.sqlite_path() {
        Some(path) => {
            let lock = SqliteServeLock::acquire(Path::new(path))?;
            tracing::debug!(lock = %lock.path().display(), "holding the SQLite serve lock");
            Some(lock)
        }
        None => None,
    };
    let options = PoolOptions {
        max_size: settings.service.database_pool_size,
        ..Default::default()
    };
    let database = open_database(url, keyring.clone(), options).await?;
    let applied = database.call(Migrate {}).await?;
    tracing::info!(database = %url.masked(), migrations_applied = applied.len(), "database ready");

    let listeners = Listeners::bind(&settings)?;
    let ports = (
        Listeners::port(&listeners.https),
        Listeners::port(&listeners.dips),
        Listeners::port(&listeners.metrics),
    );
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let service = Service::new(database, keyring, settings, config_files)?;
    if let Some((source, fetched)) = remote {
        service.set_remote(source, fetched);
        actix::spawn(poll_configuration_server(service.clone()));
    }
    let api =
        http::api_server(listeners.https, service.clone(), &tls, workers).map_err(|source| {
            CliError::Bind {
                address: "HTTPS listener".into(),
                source,
            }
        })?;
    let metrics_server =
        http::metrics_server(listeners.metrics, service.clone()).map_err(|source| {
            CliError::Bind {
                address: "metrics listener".into(),
                source,
            }
        })?;
    let _diset_workers = diset::serve(listeners.dips, service.clone(), diset_tls.clone(), workers)
        .map_err(|source| CliError::Bind {
            address: "DISET listener".into(),
            source,
        })?;
    service.add_reload_hook(Box::new(move |settings| tls.prepare(settings)));
    service.add_reload_hook(Box::new(move |settings| diset_tls.prepare(settings)));
    tracing::info!(
        "tokenmanager listening https={} dips={} metrics={}",
        ports.0,
        ports.1,
        ports.2
    );
    if service.settings().service.generate_demo_credentials {
        log_demo_command(&service.settings(), ports.0);
    }

    actix::spawn(reload_on_sighup(service));
    let (api, metrics_server) = futures_util::future::join(api, metrics_server).await;
    api.and(metrics_server).map_err(|source| CliError::Bind {
        address: "HTTP servers".into(),
        source,
    })?;
    tracing::info!("stopped");
    Ok(())
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

/// SIGHUP re-reads the configuration files, the keyring and the TLS files; a broken new
/// configuration is refused and the one in force kept.
async fn reload_on_sighup(service: Arc<Service>) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; reload with refreshConfiguration");
        return;
    };
    while hangups.recv().await.is_some() {
        if let Err(error) = service.reload() {
            tracing::error!(%error, "reload refused; the configuration in force is kept");
        }
    }
}

/// For the shipped example configuration: a throwaway CA, host certificate, user certificate and
/// proxy, written where `/DIRAC/Security` points, if the host certificate is not there yet.
fn generate_demo_pki(settings: &Settings) -> Result<(), CliError> {
    let security = &settings.security;
    let Some(cert_file) = security.cert_file.as_ref().filter(|f| !f.exists()) else {
        return Ok(());
    };
    let dir = cert_file.parent().unwrap_or(Path::new("."));
    // DemoPki::write_to's layout, which /DIRAC/Security must name.
    let expected = [
        (dir.join("hostcert.pem"), &security.cert_file, "CertFile"),
        (dir.join("hostkey.pem"), &security.key_file, "KeyFile"),
        (
            dir.join("certificates"),
            &security.ca_location,
            "CALocation",
        ),
    ];
    for (path, configured, option) in expected {
        if configured.as_ref() != Some(&path) {
            return Err(CliError::Tls(format!(
                "GenerateDemoCredentials writes {}: set /DIRAC/Security/{option} to it",
                path.display()
            )));
        }
    }
    let pki_error = |e: crate::x509::pki::PkiError| CliError::Tls(e.to_string());
    let pki = DemoPki::generate(&["localhost", "127.0.0.1"]).map_err(pki_error)?;
    pki.write_to(dir).map_err(pki_error)?;
    let proxy = pki
        .user
        .proxy(ProxyKind::Rfc3820)
        .issue()
        .map_err(pki_error)?;
    proxy
        .write_proxy_file(&dir.join("userproxy.pem"))
        .map_err(pki_error)?;
    tracing::warn!(dir = %dir.display(), user = DemoPki::USER_DN, "generated a throwaway demo PKI");
    Ok(())
}

fn log_demo_command(settings: &Settings, https_port: u16) {
    let Some(dir) = settings
        .security
        .cert_file
        .as_ref()
        .and_then(|f| f.parent())
    else {
        return;
    };
    let proxy = dir.join("userproxy.pem");
    let ca = dir.join("certificates");
    let host = match settings.service.listen_address {
        address if address.is_unspecified() => "127.0.0.1".to_owned(),
        address => address.to_string(),
    };
    tracing::info!(
        "try: curl --capath {} --cert {} -X POST https://{host}:{https_port}/api/v1/whoami",
        ca.display(),
        proxy.display()
    );
}
