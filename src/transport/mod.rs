//! Below the protocols: listening sockets and their accept loops, connection admission, the
//! TLS server contexts (reloadable, with the peer's identity read once per connection) that the
//! HTTPS and DISET listeners share, and request bodies read within a size and a deadline.

pub mod admission;
pub mod descriptors;
pub mod serve;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, web};

use crate::config::Settings;

/// Thousands of jobs may connect at once: a listen backlog of 4096 rather than std's 128, whose
/// overflow drops connections before TLS even starts.
const LISTEN_BACKLOG: i32 = 4096;

/// A listening socket for the service's listeners (and the benchmark's bare baseline server).
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// How much body a request may send, and how fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

impl BodyLimits {
    /// The limits of a request: a caller with a client certificate or a bearer token gets the
    /// configured `MaxBodyBytes` and `BodyTimeout`; anyone else (ping and whoami are open to
    /// all) the small `AnonymousMaxBodyBytes` within `AnonymousBodyTimeout`, so that an anonymous
    /// client cannot hold a connection and a megabyte by dripping a body.
    pub fn for_caller(settings: &Settings, identified: bool) -> Self {
        let connections = &settings.service.connections;
        if identified {
            Self {
                max_bytes: settings.service.max_body_bytes,
                timeout: connections.body_timeout,
            }
        } else {
            Self {
                max_bytes: connections.anonymous_max_body_bytes,
                timeout: connections.anonymous_body_timeout,
            }
        }
    }
}

/// The whole request body, refused as soon as it passes the size limit (at once if its
/// Content-Length says it will) or its deadline.
pub async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limits: BodyLimits,
) -> Result<Vec<u8>, BodyError> {
    use futures_util::StreamExt;
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limits.max_bytes) {
        return Err(BodyError::TooLarge(limits.max_bytes));
    }
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
            if (body.len() + chunk.len()) as u64 > limits.max_bytes {
                return Err(BodyError::TooLarge(limits.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(limits.timeout, read)
        .await
        .map_err(|_| BodyError::Timeout(limits.timeout))?
}

/// The local address of an HTTPS connection, in its connection data: the host of the URL a
/// request without a Host header reached.
#[derive(Clone, Copy, Debug)]
pub struct LocalAddress(pub SocketAddr);
