//! The DISET client side (§6.2.4), for the calls this service makes to other DIRAC services (the
//! Configuration Server): one TLS connection per call with the host certificate, proposal,
//! arguments, result.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::verify::X509VerifyFlags;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::codec::frame::{self, FrameError};
use super::codec::mixed::{self, Encoding};
use super::codec::{DecodeError, Value};

/// A reply is bounded: a whole DIRAC CS fits easily.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0} (expected dips://host:port/System/Service)")]
    Url(String),
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url} timed out")]
    Timeout { url: String },
    #[error("{url}: {source}")]
    Frame {
        url: String,
        #[source]
        source: FrameError,
    },
    #[error("{url} sent an undecodable message: {source}")]
    Decode {
        url: String,
        #[source]
        source: DecodeError,
    },
    #[error("{url} refused the call: {message}")]
    Refused { url: String, message: String },
}

/// Where a DISET service lives: `dips://host:port/System/Service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUrl {
    pub host: String,
    pub port: u16,
    pub service: String,
}

impl ServiceUrl {
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Url(url.to_owned());
        let rest = url.strip_prefix("dips://").ok_or_else(bad)?;
        let (address, service) = rest.split_once('/').ok_or_else(bad)?;
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() || service.split('/').count() != 2 {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            service: service.to_owned(),
        })
    }
}

impl std::fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dips://{}:{}/{}", self.host, self.port, self.service)
    }
}

/// A client identity (the host certificate) and the CAs it trusts.
pub struct DisetClient {
    connector: SslConnector,
    timeout: Duration,
}

impl DisetClient {
    pub fn new(
        cert_file: &Path,
        key_file: &Path,
        ca_dir: &Path,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let tls = |e: openssl::error::ErrorStack| ClientError::Tls(e.to_string());
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls)?;
        builder
            .set_certificate_chain_file(cert_file)
            .map_err(|e| ClientError::Tls(format!("{}: {e}", cert_file.display())))?;
        builder
            .set_private_key_file(key_file, SslFiletype::PEM)
            .map_err(|e| ClientError::Tls(format!("{}: {e}", key_file.display())))?;
        builder
            .load_verify_locations(None, Some(ca_dir))
            .map_err(|e| ClientError::Tls(format!("{}: {e}", ca_dir.display())))?;
        builder.set_verify(SslVerifyMode::PEER);
        builder
            .verify_param_mut()
            .set_flags(X509VerifyFlags::ALLOW_PROXY_CERTS)
            .map_err(tls)?;
        Ok(Self {
            connector: builder.build(),
            timeout,
        })
    }

    /// Calls `method(args)` as a host (`extraCredentials = "hosts"`), in JSON as DIRAC 9 does;
    /// the S_OK's value, or the S_ERROR's message.
    pub async fn call(
        &self,
        url: &ServiceUrl,
        method: &str,
        args: Vec<Value>,
    ) -> Result<Value, ClientError> {
        tokio::time::timeout(self.timeout, self.exchange(url, method, args))
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.to_string(),
            })?
    }

    async fn exchange(
        &self,
        url: &ServiceUrl,
        method: &str,
        args: Vec<Value>,
    ) -> Result<Value, ClientError> {
        let name = url.to_string();
        let connect = |reason: String| ClientError::Connect {
            url: name.clone(),
            reason,
        };
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let ssl = self
            .connector
            .configure()
            .and_then(|c| c.into_ssl(&url.host))
            .map_err(|e| connect(e.to_string()))?;
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| connect(e.to_string()))?;
        Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|e| connect(format!("TLS: {e}")))?;
        let mut stream = BufStream::new(stream);

        let text = |s: &str| Value::Str(s.to_owned());
        let proposal = Value::s_ok(Value::List(vec![
            Value::List(vec![text(&url.service), text("None"), text("unknown")]),
            Value::List(vec![text("RPC"), text(method)]),
            text("hosts"),
            text(concat!("tokenmanager-", env!("CARGO_PKG_VERSION"))),
        ]));
        send(&mut stream, &proposal, &name).await?;
        receive(&mut stream, &name).await?;
        send(&mut stream, &Value::s_ok(Value::List(args)), &name).await?;
        let result = receive(&mut stream, &name).await;
        let _ = stream.shutdown().await;
        result
    }
}

async fn send(
    stream: &mut BufStream<SslStream<TcpStream>>,
    message: &Value,
    url: &str,
) -> Result<(), ClientError> {
    let payload =
        mixed::encode_message(message, Encoding::Json).map_err(|e| ClientError::Refused {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
    let io = |e: std::io::Error| ClientError::Frame {
        url: url.to_owned(),
        source: FrameError::Io(e),
    };
    stream
        .write_all(&frame::encode_frame(&payload))
        .await
        .map_err(io)?;
    stream.flush().await.map_err(io)
}

/// The next S_OK's value (keep-alive frames answered); an S_ERROR becomes `Refused`.
async fn receive(
    stream: &mut BufStream<SslStream<TcpStream>>,
    url: &str,
) -> Result<Value, ClientError> {
    loop {
        let received = frame::read_frame(stream, MAX_REPLY_BYTES)
            .await
            .map_err(|source| ClientError::Frame {
                url: url.to_owned(),
                source,
            })?;
        let (message, encoding) =
            mixed::decode_message(&received.payload).map_err(|source| ClientError::Decode {
                url: url.to_owned(),
                source,
            })?;
        if received.keep_alive {
            if let Some(id) = frame::keep_alive_ping_id(&message)
                && let Ok(pong) = frame::keep_alive_pong(id, encoding)
            {
                let _ = stream.write_all(&pong).await;
                let _ = stream.flush().await;
            }
            continue;
        }
        return message
            .ok_value()
            .cloned()
            .map_err(|(_, message)| ClientError::Refused {
                url: url.to_owned(),
                message,
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_need_host_port_and_system_service() {
        assert_eq!(
            ServiceUrl::parse("dips://cs.example.org:9135/Configuration/Server").unwrap(),
            ServiceUrl {
                host: "cs.example.org".into(),
                port: 9135,
                service: "Configuration/Server".into()
            }
        );
        for bad in [
            "https://cs:9135/Configuration/Server",
            "dips://cs/Configuration/Server",
            "dips://cs:x/Configuration/Server",
            "dips://cs:9135/Configuration",
            "dips://:9135/Configuration/Server",
        ] {
            assert!(ServiceUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
