//! The DISET client side (docs/DIRAC.md#a-diset-call): one TLS connection per call, proposal,
//! arguments, result. [`DisetClient`] calls other DIRAC services (the Configuration Server) with a
//! host certificate; [`RpcCall`] is the conversation on a connection opened elsewhere (the load
//! generator's).

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::verify::X509VerifyFlags;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::frame::{self, FrameError};
use crate::mixed::{self, Encoding};
use crate::{DecodeError, EncodeError, Value};

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
        let call = RpcCall::new(
            &url.service,
            method,
            args,
            Value::Str("hosts".to_owned()),
            CLIENT_VERSION,
        )
        .map_err(|e| ClientError::Refused {
            url: name.clone(),
            message: e.to_string(),
        })?;
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
        let result = call.run(&mut stream).await;
        let _ = stream.shutdown().await;
        result.map_err(|error| match error {
            RpcError::Frame(source) => ClientError::Frame { url: name, source },
            RpcError::Decode(source) => ClientError::Decode { url: name, source },
            RpcError::Refused(message) => ClientError::Refused { url: name, message },
        })
    }
}

/// The proposal's last element, which DIRAC logs as the client's version; the workspace shares
/// the service's version.
const CLIENT_VERSION: &str = concat!("tokenmanager-", env!("CARGO_PKG_VERSION"));

/// Why one RPC on an open connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// The S_ERROR's message, of the proposal's reply or of the result.
    #[error("{0}")]
    Refused(String),
}

/// One RPC's two client messages (docs/DIRAC.md#a-diset-call: the proposal, then the arguments),
/// encoded in JSON as DIRAC 9 does and framed once, so that a load generator can replay them on
/// many connections.
pub struct RpcCall {
    proposal: Vec<u8>,
    arguments: Vec<u8>,
}

impl RpcCall {
    /// `method(args)` of `service` (`System/Service`); `extra_credentials` is DIRAC's (`"hosts"`,
    /// `""`, `[DN, group]`), `client_version` the proposal's last element.
    pub fn new(
        service: &str,
        method: &str,
        args: Vec<Value>,
        extra_credentials: Value,
        client_version: &str,
    ) -> Result<Self, EncodeError> {
        let text = |s: &str| Value::Str(s.to_owned());
        let proposal = Value::s_ok(Value::List(vec![
            Value::List(vec![text(service), text("None"), text("unknown")]),
            Value::List(vec![text("RPC"), text(method)]),
            extra_credentials,
            text(client_version),
        ]));
        let frame = |message: &Value| {
            Ok(frame::encode_frame(&mixed::encode_message(
                message,
                Encoding::Json,
            )?))
        };
        Ok(Self {
            proposal: frame(&proposal)?,
            arguments: frame(&Value::s_ok(Value::List(args)))?,
        })
    }

    /// Runs the call on a fresh connection (buffered: frame headers are read a byte at a time):
    /// the result's S_OK value; an S_ERROR, to the proposal or as the result, is `Refused`.
    pub async fn run<S>(&self, stream: &mut S) -> Result<Value, RpcError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        send(stream, &self.proposal).await?;
        receive(stream).await?;
        send(stream, &self.arguments).await?;
        receive(stream).await
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) -> Result<(), FrameError> {
    stream.write_all(frame).await?;
    Ok(stream.flush().await?)
}

/// The next S_OK's value, keep-alive pings answered on the way (a DIRAC server pings a
/// connection that looks idle, e.g. while a slow call runs).
async fn receive<S>(stream: &mut S) -> Result<Value, RpcError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let received = frame::read_frame(stream, MAX_REPLY_BYTES).await?;
        let (message, encoding) = mixed::decode_message(&received.payload)?;
        if received.keep_alive {
            // A pong that cannot be written leaves a broken connection: the next read says so.
            if let Some(id) = frame::keep_alive_ping_id(&message)
                && let Ok(pong) = frame::keep_alive_pong(id, encoding)
            {
                let _ = send(stream, &pong).await;
            }
            continue;
        }
        return message
            .ok_value()
            .cloned()
            .map_err(|(_, message)| RpcError::Refused(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    /// A scripted server: its replies are read `step` bytes at a time (so that frame boundaries
    /// fall anywhere inside a read), what the client writes is recorded.
    struct Peer {
        replies: Vec<u8>,
        step: usize,
        written: Vec<u8>,
    }

    impl AsyncRead for Peer {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.step.min(self.replies.len()).min(buf.remaining());
            buf.put_slice(&self.replies[..n]);
            self.replies.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Peer {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Runs `echo("hello")` as the load generator calls it against `replies`; the result and
    /// the bytes the client sent.
    fn run(replies: &[u8], step: usize) -> (Result<Value, RpcError>, Vec<u8>) {
        let call = RpcCall::new(
            "Framework/TokenManager",
            "echo",
            vec![Value::Str("hello".into())],
            Value::Str(String::new()),
            "loadtest",
        )
        .expect("encodable");
        let mut stream = BufStream::new(Peer {
            replies: replies.to_vec(),
            step,
            written: Vec::new(),
        });
        let result = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(call.run(&mut stream));
        (result, stream.into_inner().written)
    }

    fn frames(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (prefix, payload) in parts {
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(&frame::encode_frame(payload.as_bytes()));
        }
        out
    }

    #[test]
    fn conversation_answers_pings_at_any_split() {
        let replies = frames(&[
            ("", r#"{"OK": true, "Value": null}"#),
            (
                "dka",
                r#"{"OK": true, "Value": {"id": "abc0", "kaping": true}}"#,
            ),
            (
                "dka",
                r#"{"OK": true, "Value": {"id": "abc1", "kaping": false}}"#,
            ),
            ("", r#"{"OK": true, "Value": "ok"}"#),
        ]);
        let expected = frames(&[
            (
                "",
                r#"{"OK": true, "Value": [["Framework/TokenManager", "None", "unknown"], ["RPC", "echo"], "", "loadtest"]}"#,
            ),
            ("", r#"{"OK": true, "Value": ["hello"]}"#),
            (
                "dka",
                r#"{"OK": true, "Value": {"id": "abc0", "kaping": false}}"#,
            ),
        ]);
        // Same length arithmetic as DIRAC 9.1.22's proposal in docs/DIRAC.md#a-diset-call (99 bytes
        // for "dirac"/"9.1.22").
        assert!(expected.starts_with(b"103:{"));
        for step in [1, 2, 4, 30, 1000] {
            let (result, written) = run(&replies, step);
            assert_eq!(
                result.expect("S_OK"),
                Value::Str("ok".into()),
                "step {step}"
            );
            assert_eq!(
                String::from_utf8(written).unwrap(),
                String::from_utf8(expected.clone()).unwrap(),
                "step {step}"
            );
        }
    }

    #[test]
    fn refusals_and_broken_conversations() {
        let unauthorized = frames(&[(
            "",
            r#"{"OK": false, "Errno": 1111, "Message": "Unauthorized query ( 1111 )"}"#,
        )]);
        assert!(
            matches!(run(&unauthorized, 7).0, Err(RpcError::Refused(m)) if m == "Unauthorized query ( 1111 )")
        );
        assert!(matches!(
            run(b"27:{\"OK\": true, \"Value\": null}5:{nope", 3).0,
            Err(RpcError::Decode(_))
        ));
        assert!(matches!(
            run(b"HTTP/1.1 400 Bad Request\r\n", 3).0,
            Err(RpcError::Frame(FrameError::BadHeader))
        ));
        assert!(matches!(
            run(b"27:{\"OK\": true", 3).0,
            Err(RpcError::Frame(FrameError::PeerClosed))
        ));
        assert!(matches!(
            run(b"", 3).0,
            Err(RpcError::Frame(FrameError::Closed))
        ));
    }

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
