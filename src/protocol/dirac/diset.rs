//! DIRAC's DISET protocol (`dips://`, §6.2): TLS with a mandatory client certificate, one call
//! per connection: proposal → authorization → `S_OK()` → arguments → result → close. Messages
//! are length-prefixed frames in DEncode or JSON; each reply uses the encoding the client used.

use std::collections::HashMap;
use std::net::{IpAddr, TcpListener as StdTcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dirac_wire::frame::{self, FrameError};
use dirac_wire::mixed::{self, Encoding};
use dirac_wire::{DecodeError, Value};
use openssl::ssl::Ssl;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_openssl::SslStream;

use super::{ENOAUTH, answer, dirac_message, extra_credentials};
use crate::service::{CallContext, MethodError, Service};
use crate::transport::tls::{ReloadableTls, peer_identity};

const PROTOCOL: &str = "dips";
/// DIRAC reads a proposal with `receiveData(1024)`.
const MAX_PROPOSAL_BYTES: usize = frame::PROPOSAL_LIMIT;
const ACTION_TYPES: [&str; 4] = ["RPC", "FileTransfer", "Message", "Connection"];
/// DISET's own service name, whatever the section is called.
const DISET_SERVICE_NAME: &str = "Framework/TokenManager";

/// Shared by the accept loops of every worker.
struct Limits {
    connections: Semaphore,
    methods: HashMap<String, Arc<Semaphore>>,
}

/// Serves DISET on `listener` with one accept loop per worker arbiter (actix's threads, so that
/// refresh actors can be started from a call). Returns when the loops are started.
pub fn serve(
    listener: StdTcpListener,
    service: Arc<Service>,
    tls: Arc<ReloadableTls>,
    workers: usize,
) -> std::io::Result<Vec<actix_rt::Arbiter>> {
    listener.set_nonblocking(true)?;
    let settings = service.settings();
    let diset = &settings.service.diset;
    let limits = Arc::new(Limits {
        connections: Semaphore::new(diset.max_connections as usize),
        methods: diset
            .method_limits
            .iter()
            .map(|(method, limit)| (method.clone(), Arc::new(Semaphore::new(*limit as usize))))
            .collect(),
    });
    let mut arbiters = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let listener = listener.try_clone()?;
        let (service, tls, limits) = (service.clone(), tls.clone(), limits.clone());
        let arbiter = actix_rt::Arbiter::new();
        arbiter.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(listener, service, tls, limits).await,
                Err(error) => tracing::error!(%error, "the DISET listener cannot start"),
            }
        });
        arbiters.push(arbiter);
    }
    Ok(arbiters)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    tls: Arc<ReloadableTls>,
    limits: Arc<Limits>,
) {
    loop {
        let (stream, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, typically: wait rather than spin.
                tracing::warn!(%error, "DISET accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (service, tls, limits) = (service.clone(), tls.clone(), limits.clone());
        actix_rt::spawn(async move {
            // Waiting here is DIRAC's queue of petitions beyond MaxThreads.
            let Ok(_permit) = limits.connections.acquire().await else {
                return;
            };
            if let Err(error) = connection(stream, address.ip(), &service, &tls, &limits).await {
                tracing::debug!(peer = %address, %error, "DISET connection ended");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("banned IP address")]
    Banned,
    #[error("TLS handshake: {0}")]
    Handshake(String),
    #[error("no usable client certificate chain")]
    NoChain,
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

async fn connection(
    stream: TcpStream,
    ip: IpAddr,
    service: &Service,
    tls: &ReloadableTls,
    limits: &Limits,
) -> Result<(), ConnectionError> {
    let settings = service.settings();
    // DIRAC closes a banned address's connection right after accept.
    if settings.registry.banned_ips().contains(&ip) {
        return Err(ConnectionError::Banned);
    }
    let _ = stream.set_nodelay(true);
    let timeouts = &settings.service.diset;
    let ssl = Ssl::new(&tls.context()).map_err(|e| ConnectionError::Handshake(e.to_string()))?;
    let mut stream =
        SslStream::new(ssl, stream).map_err(|e| ConnectionError::Handshake(e.to_string()))?;
    tokio::time::timeout(timeouts.handshake_timeout, Pin::new(&mut stream).accept())
        .await
        .map_err(|_| ConnectionError::Timeout)?
        .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
    let certificate = peer_identity(stream.ssl()).ok_or(ConnectionError::NoChain)?;
    // The URL the client used, as DIRAC's ping reports it: the name it asked for (SNI), else our
    // address.
    let local = stream.get_ref().local_addr().ok();
    let host = stream
        .ssl()
        .servername(openssl::ssl::NameType::HOST_NAME)
        .map(str::to_owned)
        .or_else(|| local.map(|a| a.ip().to_string()))
        .unwrap_or_default();
    let url = format!(
        "dips://{host}:{}/{DISET_SERVICE_NAME}",
        local.map_or(0, |a| a.port())
    );
    let mut peer = Peer {
        // Frame headers are read byte by byte.
        stream: BufStream::new(stream),
        packet_timeout: timeouts.packet_timeout,
    };

    let (proposal, encoding) = match peer.receive(MAX_PROPOSAL_BYTES).await {
        Ok(received) => received,
        Err(
            error @ (ConnectionError::Decode(_)
            | ConnectionError::Frame(
                FrameError::BadHeader | FrameError::LimitExceeded { .. },
            )),
        ) => {
            tracing::info!(peer = %ip, %error, "invalid DISET proposal");
            let reply = Value::s_error(0, "Invalid action proposal");
            return peer.finish(&reply, Encoding::Json).await;
        }
        Err(other) => return Err(other),
    };
    let proposal = match Proposal::parse(&proposal) {
        Ok(proposal) => proposal,
        Err(message) => return peer.finish(&Value::s_error(0, &message), encoding).await,
    };
    let valid_names = [DISET_SERVICE_NAME, settings.service.name.as_str()];
    if !valid_names.contains(&proposal.service.as_str()) {
        let message = format!("{} is not up in this server", proposal.service);
        return peer.finish(&Value::s_error(0, &message), encoding).await;
    }
    if !ACTION_TYPES.contains(&proposal.action_type.as_str()) {
        let message = format!("{} is not a known action type", proposal.action_type);
        return peer.finish(&Value::s_error(0, &message), encoding).await;
    }
    if proposal.action_type != "RPC" {
        // Python accepts and then refuses; refusing at once spares the client a transfer.
        let message = format!(
            "{}/{} actions are not served by {DISET_SERVICE_NAME}",
            proposal.action_type, proposal.action_name
        );
        record_refusal(service, "unknown", "unsupported_action");
        return peer.finish(&Value::s_error(0, &message), encoding).await;
    }

    let context = CallContext {
        certificate: Some(Arc::new(certificate)),
        bearer: None,
        extra_credentials: extra_credentials(&proposal.extra_credentials),
        ip: Some(ip),
    };
    let access = match service.check_access(&context, &proposal.action_name) {
        Ok(access) => access,
        Err(error) => {
            let method = crate::service::Method::from_name(&proposal.action_name)
                .map_or("unknown", |m| m.name());
            record_refusal(service, method, error.code());
            let reply = match error {
                MethodError::NoCredentials | MethodError::Unauthorized(_) => {
                    Value::s_error(ENOAUTH, dirac_message(ENOAUTH, "Unauthorized query"))
                }
                other => Value::s_error(0, other.to_string()),
            };
            return peer.finish(&reply, encoding).await;
        }
    };
    peer.send(&Value::s_ok(Value::None), encoding).await?;

    let max_args = settings.service.max_body_bytes as usize;
    let (arguments, encoding) = peer.receive(max_args).await?;
    let args = match arguments.ok_value() {
        Ok(Value::List(args) | Value::Tuple(args)) => args.clone(),
        _ => {
            return Err(ConnectionError::Protocol(
                "the arguments are not S_OK(list)".into(),
            ));
        }
    };
    let _method_permit = match limits.methods.get(&proposal.action_name) {
        Some(limit) => limit.clone().acquire_owned().await.ok(),
        None => None,
    };
    let reply = answer(
        service,
        access,
        &context,
        &proposal.action_name,
        args,
        PROTOCOL,
        &|| url.clone(),
    )
    .await;
    peer.finish(&reply, encoding).await
}

fn record_refusal(service: &Service, method: &str, outcome: &str) {
    super::record_refusal(service.metrics(), method, PROTOCOL, outcome);
}

/// `S_OK([[service, setup, vo], [actionType, actionName], extraCredentials, clientVersion])`.
struct Proposal {
    service: String,
    action_type: String,
    action_name: String,
    extra_credentials: Value,
}

impl Proposal {
    fn parse(message: &Value) -> Result<Self, String> {
        let invalid = || "Invalid action proposal".to_owned();
        let items = match message.ok_value() {
            Ok(Value::List(items) | Value::Tuple(items)) if items.len() >= 3 => items,
            _ => return Err(invalid()),
        };
        let strings = |value: &Value| match value {
            Value::List(v) | Value::Tuple(v) => Some(v.clone()),
            _ => None,
        };
        let service = strings(&items[0]).ok_or_else(invalid)?;
        let action = strings(&items[1]).ok_or_else(invalid)?;
        let text = |value: Option<&Value>| match value {
            Some(Value::Str(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(Self {
            service: text(service.first()).ok_or_else(invalid)?,
            action_type: text(action.first()).ok_or_else(invalid)?,
            action_name: text(action.get(1)).ok_or_else(invalid)?,
            extra_credentials: items[2].clone(),
        })
    }
}

/// One side of the conversation, with DISET's keep-alive frames answered on the way.
struct Peer<S> {
    stream: S,
    packet_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    /// The next message that is not a keep-alive frame; a keep-alive ping is answered.
    async fn receive(&mut self, max_bytes: usize) -> Result<(Value, Encoding), ConnectionError> {
        loop {
            let received = tokio::time::timeout(
                self.packet_timeout,
                frame::read_frame(&mut self.stream, max_bytes),
            )
            .await
            .map_err(|_| ConnectionError::Timeout)??;
            let (message, encoding) = mixed::decode_message(&received.payload)?;
            if !received.keep_alive {
                return Ok((message, encoding));
            }
            // A pong, or a ping the client sent while waiting: answer the ping, read on.
            if let Some(id) = frame::keep_alive_ping_id(&message) {
                let pong = frame::keep_alive_pong(id, encoding)
                    .map_err(|e| ConnectionError::Protocol(e.to_string()))?;
                self.write(&pong).await?;
            }
        }
    }

    /// Sends the last message and closes with a TLS close_notify: OpenSSL keeps a session
    /// resumable only after a clean shutdown, and DISET clients reconnect for every call.
    async fn finish(&mut self, message: &Value, encoding: Encoding) -> Result<(), ConnectionError> {
        self.send(message, encoding).await?;
        let _ = tokio::time::timeout(self.packet_timeout, self.stream.shutdown()).await;
        Ok(())
    }

    async fn send(&mut self, message: &Value, encoding: Encoding) -> Result<(), ConnectionError> {
        let payload = mixed::encode_message(message, encoding)
            .map_err(|e| ConnectionError::Protocol(e.to_string()))?;
        self.write(&frame::encode_frame(&payload)).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        tokio::time::timeout(self.packet_timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| ConnectionError::Timeout)?
        .map_err(ConnectionError::Io)
    }
}
