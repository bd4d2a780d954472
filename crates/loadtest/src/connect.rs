//! Connections: plain TCP, or TLS with OpenSSL, which (unlike rustls) accepts RFC 3820 proxy
//! certificates as the client credential: a grid proxy PEM holds the proxy cert, its key and the
//! issuing user cert, and the whole chain has to be sent.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslConnector, SslMethod, SslSession, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::LoadtestError;
use crate::wire::CallError;

/// A client certificate, the certificates that chain it to a CA, and its key.
pub struct Identity {
    pub cert: X509,
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
}

fn cred_error(what: &str, path: &Path, detail: impl std::fmt::Display) -> LoadtestError {
    LoadtestError::Credentials(format!("{what} {}: {detail}", path.display()))
}

impl Identity {
    /// Reads a PEM certificate file (the first certificate is the client's, the others its
    /// chain: a grid proxy file works as is) and an unencrypted PEM key (`key`, else the
    /// certificate file). Errors name the file, never its contents.
    pub fn from_pem_files(
        cert_path: &Path,
        key_path: Option<&Path>,
    ) -> Result<Self, LoadtestError> {
        // Parse the files ourselves: OpenSSL's file loaders give opaque errors, and a missing or
        // wrong file is the most common mistake.
        let pem = std::fs::read(cert_path)
            .map_err(|e| cred_error("cannot read certificate file", cert_path, e))?;
        let mut certs = X509::stack_from_pem(&pem)
            .map_err(|e| cred_error("cannot parse certificates in", cert_path, e))?
            .into_iter();
        let cert = certs.next().ok_or_else(|| {
            cred_error(
                "no PEM certificate in",
                cert_path,
                "file has no CERTIFICATE block",
            )
        })?;
        let key_path = key_path.unwrap_or(cert_path);
        let key_pem = std::fs::read(key_path)
            .map_err(|e| cred_error("cannot read private key file", key_path, e))?;
        let key = PKey::private_key_from_pem(&key_pem).map_err(|_| {
            cred_error(
                "cannot load an unencrypted PEM private key from",
                key_path,
                "no usable key found",
            )
        })?;
        let identity = Identity {
            cert,
            chain: certs.collect(),
            key,
        };
        if !identity.key_matches() {
            return Err(cred_error(
                "private key does not match the certificate in",
                cert_path,
                "key mismatch",
            ));
        }
        Ok(identity)
    }

    fn key_matches(&self) -> bool {
        self.cert
            .public_key()
            .is_ok_and(|public| public.public_eq(&self.key))
    }
}

/// Which server certificates to accept.
pub enum Trust {
    /// A hashed CA directory (`X509_CERT_DIR`); the host name is verified too.
    CaDir(PathBuf),
    /// These CA certificates; the host name is verified too.
    Cas(Vec<X509>),
    /// Any certificate, any host name.
    Insecure,
}

pub struct TlsOptions {
    pub identity: Option<Identity>,
    pub trust: Trust,
    /// Offer the last session the server handed out on each new connection.
    pub resume: bool,
}

struct Tls {
    connector: SslConnector,
    verify_hostname: bool,
    /// Latest session ticket/id from the server; `None` when resumption is off.
    session: Option<Arc<Mutex<Option<SslSession>>>>,
}

/// Connects to one server: resolved addresses, and TLS set-up if any.
pub struct Connector {
    tls: Option<Tls>,
    host: String,
    addrs: Vec<SocketAddr>,
    /// Index of the address that answered last, so e.g. `localhost` does not retry `::1` on
    /// every new connection when the server listens on 127.0.0.1 only.
    preferred: AtomicUsize,
}

impl Connector {
    /// Plain TCP (HTTP without TLS).
    pub fn plain(host: &str, addrs: Vec<SocketAddr>) -> Self {
        Connector {
            tls: None,
            host: host.to_owned(),
            addrs,
            preferred: AtomicUsize::new(0),
        }
    }

    /// TLS to `host` (the name verified and sent as SNI) at `addrs`.
    pub fn tls(
        options: TlsOptions,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Self, LoadtestError> {
        let tls_err = |e: ErrorStack| LoadtestError::Tls(reasons(&e));
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err)?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(tls_err)?;
        if let Some(identity) = options.identity {
            b.set_certificate(&identity.cert).map_err(tls_err)?;
            for issuer in identity.chain {
                b.add_extra_chain_cert(issuer).map_err(tls_err)?;
            }
            b.set_private_key(&identity.key).map_err(tls_err)?;
        }
        let verify_hostname = match options.trust {
            Trust::Insecure => {
                b.set_verify(SslVerifyMode::NONE);
                false
            }
            Trust::CaDir(dir) => {
                if !dir.is_dir() {
                    return Err(cred_error(
                        "CA directory",
                        &dir,
                        "is not a readable directory",
                    ));
                }
                b.load_verify_locations(None, Some(&dir)).map_err(tls_err)?;
                true
            }
            Trust::Cas(cas) => {
                for ca in cas {
                    b.cert_store_mut().add_cert(ca).map_err(tls_err)?;
                }
                true
            }
        };
        let session = options.resume.then(|| {
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
            tls: Some(Tls {
                connector: b.build(),
                verify_hostname,
                session,
            }),
            ..Connector::plain(host, addrs)
        })
    }

    /// Opens a TCP connection and completes the TLS handshake if any; returns whether the TLS
    /// session was resumed.
    pub async fn connect(&self) -> Result<(Stream, bool), CallError> {
        let tcp = self.connect_tcp().await?;
        self.handshake(tcp).await
    }

    /// Completes the TLS handshake, if any, on a TCP connection opened elsewhere (e.g. from a
    /// chosen source address); returns whether the TLS session was resumed.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<(Stream, bool), CallError> {
        // Nagle would add up to 40 ms to small request/response exchanges.
        tcp.set_nodelay(true).map_err(CallError::Connect)?;
        let Some(tls) = &self.tls else {
            return Ok((Stream::Plain(tcp), false));
        };
        let tls_err = |e: ErrorStack| CallError::Tls(reasons(&e));
        let mut cfg = tls.connector.configure().map_err(tls_err)?;
        if !tls.verify_hostname {
            cfg.set_verify_hostname(false);
        }
        if let Some(slot) = &tls.session {
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
        Ok((Stream::Tls(stream), resumed))
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
            io::Error::other("no address to connect to")
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

/// An open connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(SslStream<TcpStream>),
}

impl Stream {
    /// Closes the connection, with a TLS close_notify first: OpenSSL marks a session
    /// unresumable when its connection is torn down without a proper shutdown.
    pub async fn close(mut self) {
        // The server may already have closed its side; there is nothing useful to do on error.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self).await;
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
