//! The HTTP front-ends: the HTTPS connections (JSON API and DIRAC's HTTPS protocol) and the
//! plain-HTTP metrics connections with health checks, each served by actix-http behind the
//! listeners' own admission and TLS accept (`transport`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::{Extensions, HttpService, Protocol};
use actix_service::{
    IntoServiceFactory, Service as _, ServiceFactory, ServiceFactoryExt, map_config,
};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use tokio::net::TcpStream;

use crate::config::ConnectionSettings;
use crate::protocol::{dirac, json};
use crate::service::{ErrorCode, Service};
use crate::transport::LocalAddress;
use crate::transport::admission::{Admitted, State};
use crate::transport::serve::ConnectionHandler;
use crate::transport::tls::{self, ReloadableTls, TlsConnection};

/// How long a connection whose reply is sent may take to close before it is dropped (actix-web's
/// default).
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTPS front-end: a factory, run on each worker, of the handler that takes an admitted
/// connection through its TLS handshake and serves its requests. Client certificates are read
/// at the handshake, so that every request knows its caller (see [`record_peer`]).
pub fn https_connections(
    service: Arc<Service>,
    tls: Arc<ReloadableTls>,
) -> impl Fn() -> LocalBoxFuture<'static, ConnectionHandler> + Send + Clone + 'static {
    move || {
        let (service, tls) = (service.clone(), tls.clone());
        Box::pin(async move {
            let settings = service.settings();
            let connections = settings.service.connections.clone();
            let dirac_paths = settings.service.https_paths.clone();
            let app = App::new()
                .app_data(web::Data::new(service.clone()))
                // DIRAC's static paths first: they carry most of the traffic and match without
                // the JSON API's pattern.
                .configure(dirac::https::routes(dirac_paths))
                .configure(json::routes)
                .default_service(web::to(not_found));
            let http =
                http_service::<TlsConnection, _, _>(app, &connections, Some(record_peer)).await;
            Rc::new(move |io: Admitted<TcpStream>, peer: SocketAddr| {
                let (http, tls, connections) = (http.clone(), tls.clone(), connections.clone());
                Box::pin(async move {
                    let accepted = tls::accept(
                        io,
                        peer,
                        &tls,
                        connections.first_byte_timeout,
                        connections.handshake_timeout,
                    )
                    .await;
                    match accepted {
                        Ok(connection) => {
                            let _ = http.call((connection, Protocol::Http1, Some(peer))).await;
                        }
                        Err(error) => {
                            tracing::debug!(%peer, %error, "HTTPS connection not accepted")
                        }
                    }
                }) as LocalBoxFuture<'static, ()>
            }) as ConnectionHandler
        })
    }
}

/// The metrics front-end: `/metrics`, `/healthz` (the process is up) and `/readyz` (the
/// database answers, the configuration is loaded), in plain HTTP.
pub fn metrics_connections(
    service: Arc<Service>,
) -> impl Fn() -> LocalBoxFuture<'static, ConnectionHandler> + Send + Clone + 'static {
    move || {
        let service = service.clone();
        Box::pin(async move {
            let connections = service.settings().service.connections.clone();
            let app = App::new()
                .app_data(web::Data::new(service.clone()))
                .route("/metrics", web::get().to(render_metrics))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz));
            let http = http_service::<Admitted<TcpStream>, _, _>(app, &connections, None).await;
            Rc::new(move |io: Admitted<TcpStream>, peer: SocketAddr| {
                let (http, first_byte_timeout) = (http.clone(), connections.first_byte_timeout);
                Box::pin(async move {
                    if io.first_byte(first_byte_timeout).await.is_err() {
                        return;
                    }
                    io.ticket().advance(State::Unidentified);
                    let _ = http.call((io, Protocol::Http1, Some(peer))).await;
                }) as LocalBoxFuture<'static, ()>
            }) as ConnectionHandler
        })
    }
}

type HttpConnectionService<T> = actix_service::boxed::BoxService<
    (T, Protocol, Option<SocketAddr>),
    (),
    actix_http::error::DispatchError,
>;

/// actix-http's service for `app` over connections of type `Io`, with the listeners'
/// keep-alive and request-head deadlines.
async fn http_service<Io, T, B>(
    app: App<T>,
    connections: &ConnectionSettings,
    on_connect: Option<fn(&Io, &mut Extensions)>,
) -> Rc<HttpConnectionService<Io>>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let app = app
        .into_factory()
        .map_err(|error: actix_web::Error| error.error_response());
    let mut builder = HttpService::build()
        .keep_alive(connections.keep_alive)
        .client_request_timeout(connections.request_head_timeout)
        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT);
    if let Some(on_connect) = on_connect {
        builder = builder.on_connect_ext(on_connect);
    }
    let factory = builder.finish(map_config(app, |_| AppConfig::default()));
    let service = factory
        .new_service(())
        .await
        .expect("an App without asynchronous data factories always starts");
    Rc::new(actix_service::boxed::service(service))
}

/// Leaves the handshake's findings for the handlers: the caller's identity as
/// `Option<Arc<ChainIdentity>>`, and the local address.
fn record_peer(connection: &TlsConnection, data: &mut Extensions) {
    data.insert(connection.identity.clone());
    if let Some(local) = connection.local {
        data.insert(LocalAddress(local));
    }
}

async fn not_found() -> HttpResponse {
    json::error_reply(ErrorCode::NotFound, "no such path")
}

/// Never waits for the database: what comes from it is counted in the background.
async fn render_metrics(service: web::Data<Arc<Service>>) -> HttpResponse {
    let (database, metrics) = (service.database(), service.metrics());
    database.export_pool_state();
    service.export_change_feed_state();
    metrics
        .db_last_answer_age
        .set(database.last_answer_age().as_secs_f64());
    metrics
        .db_gauges_age
        .set(service.database_gauges_age().as_secs_f64());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// How long `/readyz` waits for the database: probes time out after a second or two.
const READINESS_DEADLINE: Duration = Duration::from_secs(1);

async fn readyz(service: web::Data<Arc<Service>>) -> HttpResponse {
    let unavailable = |reason: &'static str| {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(reason)
    };
    if service.is_stopping() {
        return unavailable("stopping\n");
    }
    match service.database().ping_within(READINESS_DEADLINE).await {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Err(error) if error.is_timeout() => {
            tracing::warn!("readiness check failed: the database did not answer within 1 s");
            unavailable("database does not answer\n")
        }
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            unavailable("database unreachable\n")
        }
    }
}
