//! The HTTP servers: the HTTPS listener (JSON API and DIRAC's HTTPS protocol) and the
//! plain-HTTP metrics listener with health checks.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};

use crate::actors::db::DbOperation;
use crate::protocol::{dirac, json};
use crate::service::Service;
use crate::transport::tls::{ReloadableTls, record_peer};

/// The HTTPS server on `listener`: client certificates are read at connection time by
/// [`record_peer`], so that every request knows its caller.
pub fn api_server(
    listener: TcpListener,
    service: Arc<Service>,
    tls: &ReloadableTls,
    workers: usize,
) -> std::io::Result<Server> {
    let dirac_paths = service.settings().service.https_paths.clone();
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(service.clone()))
            // DIRAC's static paths first: they carry most of the traffic and match without
            // the JSON API's pattern.
            .configure(dirac::https::routes(dirac_paths.clone()))
            .configure(json::routes)
            .default_service(web::to(not_found))
    })
    .workers(workers)
    // Stopped by the application root, with every other listener.
    .disable_signals()
    // Thousands of clients may handshake at once on a small machine: actix's 3 s default
    // drops the slowest of a burst.
    .tls_handshake_timeout(std::time::Duration::from_secs(20))
    .on_connect(record_peer)
    .listen_openssl(listener, tls.acceptor_builder()?)?
    .run())
}

async fn not_found() -> HttpResponse {
    json::error_reply(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such path",
    )
}

/// The metrics server: `/metrics`, `/healthz` (the process is up) and `/readyz` (the database
/// answers, the configuration is loaded).
pub fn metrics_server(listener: TcpListener, service: Arc<Service>) -> std::io::Result<Server> {
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(service.clone()))
            .route("/metrics", web::get().to(render_metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}

async fn render_metrics(service: web::Data<Arc<Service>>) -> HttpResponse {
    let (database, metrics) = (service.database(), service.metrics());
    database.export_pool_state();
    let counts = database.run(DbOperation::CountCredentials, |store, conn| {
        store.count_credentials(conn)
    });
    match counts.await {
        Ok(counts) => {
            metrics.stored_credentials.reset();
            for (provider, state, count) in counts {
                metrics
                    .stored_credentials
                    .with_label_values(&[&provider, &state])
                    .set(count);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot count stored credentials for /metrics"),
    }
    metrics.expiring_credentials.reset();
    for (window, seconds) in EXPIRY_WINDOWS {
        // Every configured IdP has the series, at 0 when nothing expires.
        for idp in &service.settings().idps {
            metrics
                .expiring_credentials
                .with_label_values(&[idp.name(), window])
                .set(0);
        }
        let now = crate::domain::unix_now();
        let query = database.run(DbOperation::CountExpiring, move |store, conn| {
            store.count_expiring(conn, now, now + seconds)
        });
        match query.await {
            Ok(counts) => {
                for (provider, count) in counts {
                    metrics
                        .expiring_credentials
                        .with_label_values(&[&provider, window])
                        .set(count);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot count expiring credentials for /metrics"),
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}

/// The windows of `tokenmanager_expiring_credentials`.
const EXPIRY_WINDOWS: [(&str, i64); 2] = [("24h", 86_400), ("7d", 7 * 86_400)];

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(service: web::Data<Arc<Service>>) -> HttpResponse {
    match service.database().ping().await {
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
