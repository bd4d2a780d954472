//! `serve`: builds the application, reports its ports, and turns signals into reloads and stops.

use tokio::signal::unix::{SignalKind, signal};

use super::CliError;
use crate::app::{AppHandle, Application, ConfigSources};
use crate::config::Settings;
use crate::transport::descriptors;

pub async fn run(settings: Settings, sources: ConfigSources) -> Result<(), CliError> {
    // Each connection is a descriptor: the soft limit (1024 from most service managers) would
    // cap the connections far below what the service handles.
    match descriptors::raise_open_file_limit() {
        Ok(limit) => tracing::info!(
            before = limit.before,
            soft = limit.soft,
            hard = limit.hard,
            "open file limit raised"
        ),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit; keeping it"),
    }
    let app = Application::build(settings, sources, prometheus::Registry::new()).await?;
    let ports = app.ports();
    // Tests and scripts read the ports from this line.
    tracing::info!(
        "tokenmanager listening https={} dips={} metrics={}",
        ports.https,
        ports.dips,
        ports.metrics
    );
    actix_rt::spawn(reload_on_sighup(app.handle()));
    actix_rt::spawn(stop_on_signals(app.handle()));
    Ok(app.run().await?)
}

/// SIGHUP re-reads the configuration files, the keyring and the TLS files; a broken new
/// configuration is refused and the one in force kept.
async fn reload_on_sighup(app: AppHandle) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; reload with refreshConfiguration");
        return;
    };
    while hangups.recv().await.is_some() {
        if let Err(error) = app.reload() {
            tracing::error!(%error, "reload refused; the configuration in force is kept");
        }
    }
}

/// SIGTERM stops gracefully (calls in progress get their grace period), SIGINT and SIGQUIT at
/// once; a second signal during a graceful stop ends it at once.
async fn stop_on_signals(app: AppHandle) {
    let listen = |kind| {
        signal(kind)
            .map_err(|error| tracing::error!(%error, "cannot listen for a stop signal"))
            .ok()
    };
    let (Some(mut term), Some(mut int), Some(mut quit)) = (
        listen(SignalKind::terminate()),
        listen(SignalKind::interrupt()),
        listen(SignalKind::quit()),
    ) else {
        return;
    };
    let graceful = tokio::select! {
        _ = term.recv() => true,
        _ = int.recv() => false,
        _ = quit.recv() => false,
    };
    tracing::info!(graceful, "stopping");
    if !graceful {
        app.stop(false).await;
        return;
    }
    tokio::select! {
        () = app.stop(true) => {}
        _ = async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = quit.recv() => {}
            }
        } => {
            tracing::warn!("second stop signal: stopping at once");
            app.stop(false).await;
        }
    }
}
