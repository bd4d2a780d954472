//! DIRAC's DISET protocol (`dips://`, docs/DIRAC.md#diset-dips): TLS with a mandatory client
//! certificate, one call per connection: proposal → authorization → `S_OK()` → arguments → result →
//! close. Messages are length-prefixed frames in DEncode or JSON; each reply uses the encoding the
//! client used.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use dirac_wire::frame::{self, FrameError};
use dirac_wire::mixed::{self, Encoding};
use dirac_wire::{DecodeError, Value};
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{answer, extra_credentials, s_error};
use crate::domain::audit::Protocol;
use crate::service::{CallContext, Service};
use crate::transport::admission::{Admitted, ShedReason};
use crate::transport::serve::ConnectionHandler;
use crate::transport::tls::{self, ReloadableTls, TlsConnection};

const PROTOCOL: &str = "dips";
/// DIRAC reads a proposal with `receiveData(1024)`.
const MAX_PROPOSAL_BYTES: usize = frame::PROPOSAL_LIMIT;
const ACTION_TYPES: [&str; 4] = ["RPC", "FileTransfer", "Message", "Connection"];
/// DISET's own service name, whatever the section is called.
const DISET_SERVICE_NAME: &str = "Framework/TokenManager";
/// Request outcomes only DISET has, in the metrics: no free `MaxThreads` slot in time, and an
/// action other than RPC. No JSON API reply carries them, so they are not [`ErrorCode`]s.
///
/// [`ErrorCode`]: crate::service::ErrorCode
const OUTCOME_BUSY: &str = "busy";
const OUTCOME_UNSUPPORTED_ACTION: &str = "unsupported_action";
/// Keep-alive frames a peer may send while it owes us a message: DIRAC's RPC client sends none,
/// and a peer that only pings must not hold its slot.
const MAX_KEEP_ALIVES_PER_MESSAGE: usize = 4;

/// Shared by the connections of every worker.
struct Limits {
    connections: Semaphore,
    methods: HashMap<String, Arc<Semaphore>>,
}

/// What serves each admitted DISET connection: its handshake (a verified client certificate is
/// required), then a `MaxThreads` slot, then the call.
pub fn connections(
    service: Arc<Service>,
    tls: Arc<ReloadableTls>,
) -> impl Fn() -> std::future::Ready<ConnectionHandler> + Send + Clone + 'static {
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
    move || {
        let (service, tls, limits) = (service.clone(), tls.clone(), limits.clone());
        let handler: ConnectionHandler = Rc::new(move |io, peer| {
            let (service, tls, limits) = (service.clone(), tls.clone(), limits.clone());
            Box::pin(async move {
                if let Err(error) = serve_connection(io, peer, &service, &tls, &limits).await {
                    tracing::debug!(%peer, %error, "DISET connection ended");
                }
            }) as LocalBoxFuture<'static, ()>
        });
        std::future::ready(handler)
    }
}

async fn serve_connection(
    io: Admitted<TcpStream>,
    peer: SocketAddr,
    service: &Service,
    tls: &ReloadableTls,
    limits: &Limits,
) -> Result<(), ConnectionError> {
    let settings = service.settings();
    // DIRAC closes a banned address's connection right after accept.
    if settings.registry.banned_ips().contains(&peer.ip()) {
        return Err(ConnectionError::Banned);
    }
    let timeouts = &settings.service.connections;
    let connection = tls::accept(
        io,
        peer,
        tls,
        timeouts.first_byte_timeout,
        timeouts.handshake_timeout,
    )
    .await
    .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
    if connection.identity.is_none() {
        return Err(ConnectionError::NoChain);
    }
    let queue_timeout = settings.service.diset.queue_timeout;
    // Waiting here is DIRAC's queue of petitions beyond MaxThreads: only callers with a verified
    // certificate wait, and not for ever.
    match tokio::time::timeout(queue_timeout, limits.connections.acquire()).await {
        Ok(Ok(_permit)) => call(connection, service, limits).await,
        Ok(Err(_)) => Ok(()),
        Err(_) => refuse_busy(connection, service, queue_timeout).await,
    }
}

/// The answer to a call that found no free slot: DIRAC's client reads it as the reply to its
/// proposal.
async fn refuse_busy(
    connection: TlsConnection,
    service: &Service,
    waited: Duration,
) -> Result<(), ConnectionError> {
    record_refusal(service, "unknown", OUTCOME_BUSY);
    let packet_timeout = service.settings().service.diset.packet_timeout;
    connection.ticket().count_refusal(ShedReason::QueueTimeout);
    let mut peer = Peer {
        stream: BufStream::new(connection),
        packet_timeout,
    };
    let encoding = match peer.receive(MAX_PROPOSAL_BYTES).await {
        Ok((_, encoding)) => encoding,
        Err(_) => Encoding::Json,
    };
    let message = format!(
        "Service busy: no free slot within {} s (MaxThreads), try again later",
        waited.as_secs()
    );
    peer.finish(&Value::s_error(0, &message), encoding).await
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

/// One call on a connection whose caller holds a verified certificate and a slot.
async fn call(
    connection: TlsConnection,
    service: &Service,
    limits: &Limits,
) -> Result<(), ConnectionError> {
    let settings = service.settings();
    let ip = connection.peer.ip();
    let certificate = connection
        .identity
        .clone()
        .ok_or(ConnectionError::NoChain)?;
    // The URL the client used, as DIRAC's ping reports it: the name it asked for (SNI), else our
    // address.
    let local = connection.local;
    let host = connection
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
        stream: BufStream::new(connection),
        packet_timeout: settings.service.diset.packet_timeout,
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
        record_refusal(service, "unknown", OUTCOME_UNSUPPORTED_ACTION);
        return peer.finish(&Value::s_error(0, &message), encoding).await;
    }

    let context = CallContext {
        certificate: Some(certificate),
        bearer: None,
        extra_credentials: extra_credentials(&proposal.extra_credentials),
        ip: Some(ip),
        protocol: Protocol::Diset,
    };
    let access = match service.check_access(&context, &proposal.action_name) {
        Ok(access) => access,
        Err(error) => {
            let method = crate::service::Method::from_name(&proposal.action_name)
                .map_or("unknown", |m| m.name());
            record_refusal(service, method, error.code().as_str());
            return peer.finish(&s_error(&error), encoding).await;
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
    /// The next message that is not a keep-alive frame, within one `packet_timeout` however
    /// many keep-alive pings come first (each is answered; more than a few drop the peer).
    async fn receive(&mut self, max_bytes: usize) -> Result<(Value, Encoding), ConnectionError> {
        let packet_timeout = self.packet_timeout;
        tokio::time::timeout(packet_timeout, async {
            let mut keep_alives = 0;
            loop {
                let received = frame::read_frame(&mut self.stream, max_bytes).await?;
                let (message, encoding) = mixed::decode_message(&received.payload)?;
                if !received.keep_alive {
                    return Ok((message, encoding));
                }
                keep_alives += 1;
                if keep_alives > MAX_KEEP_ALIVES_PER_MESSAGE {
                    return Err(ConnectionError::Protocol(format!(
                        "more than {MAX_KEEP_ALIVES_PER_MESSAGE} keep-alive frames instead of a message"
                    )));
                }
                // A pong, or a ping the client sent while waiting: answer the ping, read on.
                if let Some(id) = frame::keep_alive_ping_id(&message) {
                    let pong = frame::keep_alive_pong(id, encoding)
                        .map_err(|e| ConnectionError::Protocol(e.to_string()))?;
                    self.write(&pong).await?;
                }
            }
        })
        .await
        .map_err(|_| ConnectionError::Timeout)?
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
