//! How the benchmark reaches the servers: connectors to 127.0.0.1, requests as they go on the
//! wire, and a list of them sent in order.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use openssl::x509::X509Ref;
use tokenmanager::x509::pki::CertifiedKey;
use tokenmanager_loadtest::connect::{Connector, Identity, TlsOptions, Trust};
use tokenmanager_loadtest::engine;
use tokenmanager_loadtest::http::{self, Response};

/// A server on 127.0.0.1, and how to reach it.
pub type Target = Arc<Connector>;

fn loopback(port: u16) -> Vec<SocketAddr> {
    vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]
}

/// Plain HTTP (the fixture IdP).
pub fn plain(port: u16) -> Target {
    Arc::new(Connector::plain("127.0.0.1", loopback(port)))
}

/// HTTPS trusting only `ca`, presenting `credential` and its chain; no TLS session resumption
/// (each connection of the burst costs a full handshake, as it always did here).
pub fn tls(port: u16, ca: &X509Ref, credential: &CertifiedKey) -> Target {
    let options = TlsOptions {
        identity: Some(Identity {
            cert: credential.cert.clone(),
            chain: credential.chain.clone(),
            key: credential.key.clone(),
        }),
        trust: Trust::Cas(vec![ca.to_owned()]),
        resume: false,
    };
    Arc::new(Connector::tls(options, "127.0.0.1", loopback(port)).expect("TLS client set-up"))
}

/// A request as it goes on the wire.
pub fn request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let headers: &[(&str, &str)] = match body {
        Some(_) => &[("Content-Type", "application/json")],
        None => &[],
    };
    http::request(method, "127.0.0.1", path, headers, body)
}

/// updateToken of `user`'s fixture `grant` (as `/test/grant` returned it) for provider
/// `test-idp`, as the benchmarks store their credentials.
pub fn update_token_request(user: &str, grant: &serde_json::Value) -> Vec<u8> {
    let body = serde_json::json!({
        "token": {"refresh_token": grant["refresh_token"], "access_token": grant["access_token"],
                  "expires_in": grant["expires_in"], "token_type": "Bearer"},
        "userID": crate::fixture::user_id(user),
        "provider": crate::fixture::PROVIDER,
    });
    request(
        "POST",
        "/api/v1/updateToken",
        Some(body.to_string().as_bytes()),
    )
}

/// Sends each of `requests` over `connections` kept-alive connections, on the calling thread;
/// the replies in order, and the time it took.
pub fn run_list(
    target: &Target,
    connections: usize,
    requests: Vec<Vec<u8>>,
) -> (Vec<Response>, Duration) {
    engine::send_all(target, connections, requests)
        .unwrap_or_else(|e| panic!("sending the set-up requests failed: {e}"))
}
