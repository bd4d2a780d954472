//! TLS on the HTTPS listener: who the peer is (read once per connection), and a server context
//! that reloads (new host certificate, new CA directory) without dropping connections.

use std::any::Any;
use std::sync::{Arc, RwLock};

use actix_tls::accept::openssl::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use openssl::ssl::{SniError, SslAcceptorBuilder, SslContext};

use crate::config::Settings;
use crate::x509::identity::{ChainIdentity, PeerChain};
use crate::x509::tls::{self, ClientCertMode, TlsError, TlsSettings};

/// The server context in force. Every handshake switches to it in the ClientHello callback
/// (OpenSSL runs that callback with or without SNI), so a reload applies to new connections and
/// leaves established ones alone.
pub struct ReloadableTls {
    current: Arc<RwLock<SslContext>>,
    first: TlsSettings,
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
        let first = tls_settings(settings, listener)?;
        let context = tls::acceptor(&first)?.into_context();
        Ok(Self {
            current: Arc::new(RwLock::new(context)),
            first,
            listener,
        })
    }

    /// The context in force, for servers that set up each connection themselves (DISET).
    pub fn context(&self) -> SslContext {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A builder for actix-web's listener, switching to the current context at each handshake.
    pub fn acceptor_builder(&self) -> std::io::Result<SslAcceptorBuilder> {
        let mut builder = tls::acceptor_builder(&self.first).map_err(std::io::Error::other)?;
        let current = self.current.clone();
        builder.set_servername_callback(move |ssl, _alert| {
            let context = current.read().unwrap_or_else(|e| e.into_inner()).clone();
            ssl.set_ssl_context(&context)
                .map_err(|_| SniError::ALERT_FATAL)
        });
        Ok(builder)
    }

    /// Builds the context of `settings`; the returned closure puts it in force. A certificate
    /// or CA directory that does not load refuses the reload.
    pub fn prepare(&self, settings: &Settings) -> Result<Box<dyn FnOnce() + Send>, String> {
        let context = tls_settings(settings, self.listener)
            .and_then(|s| tls::acceptor(&s))
            .map_err(|e| e.to_string())?
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

/// actix-web's on-connect hook: analyses the verified client chain once per connection and
/// leaves `Option<Arc<ChainIdentity>>` for the handlers.
pub fn record_peer(connection: &dyn Any, data: &mut Extensions) {
    let Some(stream) = connection.downcast_ref::<TlsStream<TcpStream>>() else {
        return;
    };
    data.insert(peer_identity(stream.ssl()).map(Arc::new));
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
