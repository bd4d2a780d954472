use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, web};
use tokio::signal::unix::{SignalKind, signal};

use super::{CliError, open_database, open_keyring};
use crate::actors::db::{Database, Migrate, Ping};
use crate::config::Settings;
use crate::crypto::SharedKeyring;
use crate::db::{PoolOptions, SqliteServeLock};

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
            TcpListener::bind(address).map_err(|source| CliError::Bind {
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

pub async fn run(settings: Settings, config_files: Vec<PathBuf>) -> Result<(), CliError> {
    let keyring = open_keyring(&settings)?;
    let url = &settings.database;
    let _sqlite_lock = match url.sqlite_path() {
        Some(path) => {
            let lock = SqliteServeLock::acquire(std::path::Path::new(path))?;
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
    tracing::info!(
        "tokenmanager listening https={} dips={} metrics={}",
        Listeners::port(&listeners.https),
        Listeners::port(&listeners.dips),
        Listeners::port(&listeners.metrics),
    );
    tracing::info!(config = ?config_files, "serving");
    // The HTTPS and DISET protocol front-ends attach to these sockets; until then connections
    // wait in the listen backlog.
    let _protocol_listeners = (listeners.https, listeners.dips);

    actix::spawn(reload_on_sighup(keyring));
    HttpServer::new({
        let database = database.clone();
        move || {
            App::new()
                .app_data(web::Data::new(database.clone()))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
        }
    })
    .workers(1)
    .listen(listeners.metrics)
    .map_err(|source| CliError::Bind {
        address: "metrics listener".into(),
        source,
    })?
    .run()
    .await
    .map_err(|source| CliError::Bind {
        address: "metrics listener".into(),
        source,
    })?;
    tracing::info!("stopped");
    Ok(())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(database: web::Data<Database>) -> HttpResponse {
    match database.call(Ping {}).await {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body("database unreachable\n")
        }
    }
}

/// SIGHUP re-reads the keyring (a key added by `rotate-key` then encrypts this process's writes).
async fn reload_on_sighup(keyring: Arc<SharedKeyring>) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; reload by restarting");
        return;
    };
    while hangups.recv().await.is_some() {
        match keyring.reload() {
            Ok(current) => tracing::info!(newest_key = current.newest_key_id(), "keyring reloaded"),
            Err(error) => {
                tracing::error!(%error, "keyring reload failed; the previous keys stay in force")
            }
        }
    }
}
