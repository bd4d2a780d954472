//! Below the protocols: listening sockets, request bodies read within a limit, and the TLS
//! server contexts (reloadable, with the peer's identity read once per connection) that the
//! HTTPS and DISET listeners share.

pub mod descriptors;
pub mod tls;

use std::net::{SocketAddr, TcpListener};

use actix_web::web;

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
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// The whole request body, refused as soon as it passes `limit` bytes.
pub async fn read_body(mut payload: web::Payload, limit: u64) -> Result<Vec<u8>, BodyError> {
    use futures_util::StreamExt;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
