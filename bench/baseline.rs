//! The bare baseline of `bench/compare.sh`: actix-web 4 + OpenSSL and nothing else.
//!
//! `cargo build --release --example bench-baseline`, then
//! `target/release/examples/bench-baseline --cert HOSTCERT --key HOSTKEY --ca-dir CADIR [--port 0]`.
//!
//! It answers `POST` on any path with the fixed JSON body `{"OK": true, "Value": "x"}` when the
//! client presented a certificate that verified (401 otherwise, 405 for other methods). The TLS
//! set-up is the one tokenmanager's HTTPS listener uses, minus its application code: TLS 1.2
//! minimum, Mozilla intermediate ciphers, the host certificate and hashed CA directory given,
//! client certificates requested (not required) and verified with `X509_V_FLAG_ALLOW_PROXY_CERTS`
//! (so an RFC 3820 grid proxy authenticates), verify depth 50, sessions resumed from the server's
//! session cache with tickets off (as tokenmanager does, so new-connection figures compare like
//! with like), a 20 s handshake timeout, `available_parallelism()` workers and a listen backlog of
//! 4096. There is no legacy-proxy verify callback, no chain analysis, no routing, no body parsing
//! (the body is read, not looked at), no logging: the floor a TokenManager on actix-web + OpenSSL
//! cannot go below.
//!
//! Prints one line, `bench-baseline listening https=<port>`, once it accepts connections.

use std::any::Any;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use actix_tls::accept::openssl::TlsStream;
use actix_web::dev::Extensions;
use actix_web::http::Method;
use actix_web::rt::net::TcpStream;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use clap::Parser;
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslOptions, SslVerifyMode, SslVersion};
use openssl::x509::verify::X509VerifyFlags;

#[derive(Parser)]
#[command(about = "Bare actix-web + OpenSSL HTTPS server answering a fixed JSON body")]
struct Args {
    /// Host certificate PEM (leaf first, then any intermediates).
    #[arg(long)]
    cert: PathBuf,
    /// Unencrypted host key PEM.
    #[arg(long)]
    key: PathBuf,
    /// Hashed CA directory that verifies clients.
    #[arg(long)]
    ca_dir: PathBuf,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// Worker threads [default: available_parallelism, as tokenmanager].
    #[arg(long)]
    workers: Option<usize>,
}

const BODY: &str = r#"{"OK": true, "Value": "x"}"#;

/// Per connection: did the client present a certificate (that OpenSSL verified)?
#[derive(Clone, Copy)]
struct Authenticated(bool);

fn record_peer(connection: &dyn Any, data: &mut Extensions) {
    let presented = connection
        .downcast_ref::<TlsStream<TcpStream>>()
        .is_some_and(|stream| stream.ssl().peer_certificate().is_some());
    data.insert(Authenticated(presented));
}

/// Takes the body (actix-web closes a kept-alive connection whose request body was not read);
/// does not look at it.
async fn answer(request: HttpRequest, _body: web::Bytes) -> HttpResponse {
    if request.method() != Method::POST {
        return HttpResponse::MethodNotAllowed().finish();
    }
    match request.conn_data::<Authenticated>() {
        Some(Authenticated(true)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(BODY),
        _ => HttpResponse::Unauthorized()
            .content_type("application/json")
            .body(r#"{"OK": false, "Message": "no client certificate"}"#),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut tls = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    tls.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    tls.set_certificate_chain_file(&args.cert)?;
    tls.set_private_key_file(&args.key, SslFiletype::PEM)?;
    tls.check_private_key()?;
    let ca_dir = args.ca_dir.to_str().expect("UTF-8 CA directory path");
    tls.cert_store_mut()
        .add_lookup(openssl::x509::store::X509Lookup::hash_dir())?
        .add_dir(ca_dir, SslFiletype::PEM)?;
    tls.verify_param_mut()
        .set_flags(X509VerifyFlags::ALLOW_PROXY_CERTS)?;
    tls.set_verify_depth(50);
    tls.set_verify(SslVerifyMode::PEER);
    tls.set_session_id_context(b"bench-baseline")?;
    tls.set_options(SslOptions::NO_TICKET);

    let listener = tokenmanager::transport::listen(SocketAddr::new(args.address, args.port))?;
    let port = listener.local_addr()?.port();
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let server = HttpServer::new(|| App::new().default_service(web::to(answer)))
        .workers(workers)
        .tls_handshake_timeout(Duration::from_secs(20))
        .on_connect(record_peer)
        .listen_openssl(listener, tls)?
        .run();
    println!("bench-baseline listening https={port}");
    server.await
}
