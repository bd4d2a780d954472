//! TLS client set-up with OpenSSL, which (unlike rustls) accepts RFC 3820 proxy certificates
//! as the client credential: a grid proxy PEM holds the proxy cert, its key and the issuing
//! user cert, and the whole chain has to be sent.

use super::LoadtestError;
use super::wire::CallError;
use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::ssl::{
    SslConnector, SslMethod, SslSession, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

pub(super) type TlsStream = SslStream<TcpStream>;

/// What the TLS layer needs from the command line.
pub(super) struct TlsOptions<'a> {
    pub(super) cert: Option<&'a Path>,
    pub(super) key: Option<&'a Path>,
    pub(super) ca_dir: Option<PathBuf>,
    pub(super) insecure: bool,
    pub(super) resume: bool,
}

/// Connects to one server: resolved addresses, TLS context, and the session to resume.
pub(super) struct Connector {
    tls: SslConnector,
    host: String,
    addrs: Vec<SocketAddr>,
    /// Index of the address that answered last, so e.g. `localhost` does not retry `::1`
    /// on every new connection when the server listens on 127.0.0.1 only.
    preferred: AtomicUsize,
    verify: bool,
    /// Latest session ticket/id from the server; `None` inside when resumption is off.
    session: Option<Arc<Mutex<Option<SslSession>>>>,
}

fn cred_error(what: &str, path: &Path, detail: impl std::fmt::Display) -> LoadtestError {
    LoadtestError::Credentials(format!("{what} {}: {detail}", path.display()))
}

impl Connector {
    pub(super) fn new(
        opts: &TlsOptions<'_>,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Self, LoadtestError> {
        let tls_err = |e: ErrorStack| LoadtestError::Tls(reasons(&e));
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err)?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(tls_err)?;

        if let Some(cert_path) = opts.cert {
            // Parse the files ourselves: OpenSSL's file loaders give opaque errors, and a
            // missing or wrong file is the most common mistake. Messages never quote contents.
            let pem = std::fs::read(cert_path)
                .map_err(|e| cred_error("cannot read certificate file", cert_path, e))?;
            let chain = X509::stack_from_pem(&pem)
                .map_err(|e| cred_error("cannot parse certificates in", cert_path, e))?;
            let mut chain = chain.into_iter();
            let leaf = chain.next().ok_or_else(|| {
                cred_error(
                    "no PEM certificate in",
                    cert_path,
                    "file has no CERTIFICATE block",
                )
            })?;
            b.set_certificate(&leaf).map_err(tls_err)?;
            for extra in chain {
                b.add_extra_chain_cert(extra).map_err(tls_err)?;
            }
            let key_path = opts.key.unwrap_or(cert_path);
            let key_pem = std::fs::read(key_path)
                .map_err(|e| cred_error("cannot read private key file", key_path, e))?;
            let key = PKey::private_key_from_pem(&key_pem).map_err(|_| {
                cred_error(
                    "cannot load an unencrypted PEM private key from",
                    key_path,
                    "no usable key found",
                )
            })?;
            b.set_private_key(&key).map_err(tls_err)?;
            b.check_private_key().map_err(|_| {
                cred_error(
                    "private key does not match the certificate in",
                    cert_path,
                    "key mismatch",
                )
            })?;
        }

        if opts.insecure {
            b.set_verify(SslVerifyMode::NONE);
        } else {
            let dir = opts.ca_dir.as_deref().ok_or_else(|| {
                LoadtestError::Credentials(
                    "no CA directory: pass --ca-dir, set X509_CERT_DIR, or use --insecure"
                        .to_owned(),
                )
            })?;
            if !dir.is_dir() {
                return Err(cred_error(
                    "CA directory",
                    dir,
                    "is not a readable directory",
                ));
            }
            b.load_verify_locations(None, Some(dir)).map_err(tls_err)?;
        }

        let session = opts.resume.then(|| {
            let slot = Arc::new(Mutex::new(None));
            let store = Arc::clone(&slot);
            b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
            // Called for every ticket/session the server hands out (with TLS 1.3 after the
            // handshake); the newest one is offered on the next connection.
            b.set_new_session_callback(move |_ssl, session| {
                *store.lock().unwrap_or_else(|p| p.into_inner()) = Some(session);
            });
            slot
        });

        Ok(Connector {
            tls: b.build(),
            host: host.to_owned(),
            addrs,
            preferred: AtomicUsize::new(0),
            verify: !opts.insecure,
            session,
        })
    }

    /// Opens a TCP connection and completes the TLS handshake; returns whether the TLS
    /// session was resumed.
    pub(super) async fn connect(&self) -> Result<(TlsStream, bool), CallError> {
        let tcp = self.connect_tcp().await?;
        // Nagle would add up to 40 ms to small request/response exchanges.
        tcp.set_nodelay(true).map_err(CallError::Connect)?;

        let tls_err = |e: ErrorStack| CallError::Tls(reasons(&e));
        let mut cfg = self.tls.configure().map_err(tls_err)?;
        if !self.verify {
            cfg.set_verify_hostname(false);
        }
        if let Some(slot) = &self.session {
            let cached = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(session) = cached {
                // SAFETY: the session was produced by a connection of this same SslContext.
                unsafe { cfg.set_session(&session) }.map_err(tls_err)?;
            }
        }
        let ssl = cfg.into_ssl(&self.host).map_err(tls_err)?;
        let mut stream = SslStream::new(ssl, tcp).map_err(tls_err)?;
        Pin::new(&mut stream).connect().await.map_err(|e| {
            let detail = match e.ssl_error() {
                Some(stack) => reasons(stack),
                None => e.to_string(),
            };
            let verify = stream.ssl().verify_result();
            if verify == openssl::x509::X509VerifyResult::OK {
                CallError::Tls(detail)
            } else {
                CallError::Tls(format!("{detail} (certificate verification: {verify})"))
            }
        })?;
        let resumed = stream.ssl().session_reused();
        Ok((stream, resumed))
    }

    async fn connect_tcp(&self) -> Result<TcpStream, CallError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last_err = None;
        for i in (0..self.addrs.len()).map(|k| (first + k) % self.addrs.len()) {
            match TcpStream::connect(self.addrs[i]).await {
                Ok(tcp) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(tcp);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(CallError::Connect(last_err.unwrap_or_else(|| {
            std::io::Error::other("no address to connect to")
        })))
    }
}

/// OpenSSL's reason strings without the library/function/file:line noise.
fn reasons(stack: &ErrorStack) -> String {
    let reasons: Vec<&str> = stack.errors().iter().filter_map(|e| e.reason()).collect();
    if reasons.is_empty() {
        stack.to_string()
    } else {
        reasons.join("; ")
    }
}

/// Sends close_notify before dropping: OpenSSL marks a session unresumable when its
/// connection is torn down without a proper shutdown.
pub(super) async fn close(mut stream: TlsStream) {
    // The server may already have closed its side; there is nothing useful to do on error.
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
}
