//! TLS on the HTTPS and DISET listeners: a server context that reloads (new host certificate,
//! new CA directory) without dropping connections, and the admitted handshake that tells who the
//! peer is.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use openssl::ssl::{Ssl, SslContext};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::admission::{Admitted, ShedReason, State, Ticket};
use crate::config::Settings;
use crate::x509::identity::{ChainIdentity, PeerChain};
use crate::x509::tls::{self, ClientCertMode, TlsError, TlsSettings};

/// The server context in force: each handshake starts from the one current then, so a reload
/// applies to new connections and leaves established ones alone.
pub struct ReloadableTls {
    current: Arc<RwLock<SslContext>>,
    listener: Listener,
}

/// Which listener a context serves: they differ in client-certificate mode and session id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// DIRAC's HTTPS protocol and the JSON API: a client certificate is asked for, not required.
    Https,
    /// DISET: no handshake without a client certificate.
    Diset,
}

impl ReloadableTls {
    pub fn new(settings: &Settings, listener: Listener) -> Result<Self, TlsError> {
        let context = tls::acceptor(&tls_settings(settings, listener)?)?.into_context();
        Ok(Self {
            current: Arc::new(RwLock::new(context)),
            listener,
        })
    }

    /// The context in force.
    pub fn context(&self) -> SslContext {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Builds the context of `settings`; the returned closure puts it in force. A certificate
    /// or CA directory that does not load refuses the reload.
    pub fn prepare(&self, settings: &Settings) -> Result<Box<dyn FnOnce() + Send>, TlsError> {
        let context = tls_settings(settings, self.listener)
            .and_then(|s| tls::acceptor(&s))?
            .into_context();
        let current = self.current.clone();
        Ok(Box::new(move || {
            *current.write().unwrap_or_else(|e| e.into_inner()) = context;
            tracing::info!("TLS certificate and CA directory reloaded");
        }))
    }
}

fn tls_settings(settings: &Settings, listener: Listener) -> Result<TlsSettings, TlsError> {
    let security = &settings.security;
    let missing = |what: &'static str, option: &str| TlsError::File {
        what,
        path: option.into(),
        reason: "not configured (needed by the HTTPS and DISET listeners)".into(),
    };
    Ok(TlsSettings {
        cert_file: security
            .cert_file
            .clone()
            .ok_or_else(|| missing("host certificate", "/DIRAC/Security/CertFile"))?,
        key_file: security
            .key_file
            .clone()
            .ok_or_else(|| missing("host key", "/DIRAC/Security/KeyFile"))?,
        ca_dir: security
            .ca_location
            .clone()
            .ok_or_else(|| missing("CA directory", "/DIRAC/Security/CALocation"))?,
        client_cert: match listener {
            Listener::Https => ClientCertMode::Requested,
            Listener::Diset => ClientCertMode::Required,
        },
        session_id_context: match listener {
            Listener::Https => format!("DIRAC-tokenmanager-{}", settings.service.https_port),
            Listener::Diset => format!("DIRAC-tokenmanager-{}", settings.service.port),
        },
    })
}

/// Who the peer of a finished handshake is, from its verified chain; None without a usable one.
pub fn peer_identity(ssl: &openssl::ssl::SslRef) -> Option<ChainIdentity> {
    PeerChain::from_ssl(ssl)
        .and_then(|chain| {
            chain
                .analyse()
                .map_err(|error| tracing::warn!(%error, "refusing a client chain that cannot be analysed"))
                .ok()
        })
        // A session resumed after its proxy expired is not verified again by OpenSSL.
        .filter(|identity| identity.seconds_left > 0)
}

/// Why a connection did not become a [`TlsConnection`].
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("closed by admission ({})", .0.label())]
    Shed(ShedReason),
    #[error("TLS handshake: {0}")]
    Handshake(String),
}

/// An admitted connection through its TLS handshake: who the peer is, where it came from.
pub struct TlsConnection {
    stream: SslStream<Admitted<TcpStream>>,
    /// The verified client chain's identity; None without a usable one.
    pub identity: Option<Arc<ChainIdentity>>,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
}

/// Takes an admitted connection through its TLS handshake: its first byte within
/// `first_byte_timeout`, then a handshake slot and the handshake itself within
/// `handshake_timeout` of accept. The ticket ends `Identified` with a verified client
/// certificate, `Unidentified` without.
pub async fn accept(
    io: Admitted<TcpStream>,
    peer: SocketAddr,
    tls: &ReloadableTls,
    first_byte_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<TlsConnection, AcceptError> {
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    io.first_byte(first_byte_timeout)
        .await
        .map_err(AcceptError::Shed)?;
    // Only the handshake runs under the slot: it is what costs CPU and memory, so the SSL
    // object is made once the slot is ours.
    let slot = io
        .handshake_slot(deadline)
        .await
        .map_err(AcceptError::Shed)?;
    let ssl = Ssl::new(&tls.context()).map_err(|e| AcceptError::Handshake(e.to_string()))?;
    let mut stream = SslStream::new(ssl, io).map_err(|e| AcceptError::Handshake(e.to_string()))?;
    let handshake = tokio::time::timeout_at(deadline, Pin::new(&mut stream).accept()).await;
    drop(slot);
    let ticket = stream.get_ref().ticket();
    match handshake {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(AcceptError::Handshake(error.to_string())),
        Err(_) => {
            ticket.shed(ShedReason::HandshakeTimeout);
            return Err(AcceptError::Shed(ShedReason::HandshakeTimeout));
        }
    }
    let identity = peer_identity(stream.ssl()).map(Arc::new);
    ticket.advance(if identity.is_some() {
        State::Identified
    } else {
        State::Unidentified
    });
    let local = stream.get_ref().get_ref().local_addr().ok();
    Ok(TlsConnection {
        stream,
        identity,
        peer,
        local,
    })
}

impl TlsConnection {
    pub fn ssl(&self) -> &openssl::ssl::SslRef {
        self.stream.ssl()
    }

    pub fn ticket(&self) -> &Ticket {
        self.stream.get_ref().ticket()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
