//! The buffered connection the HTTP/1.1 client reads from, and the per-call error type.

use dirac_wire::client::RpcError;
use dirac_wire::frame::FrameError;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why one call failed; each variant is one "kind" in the report.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection broke after the handshake (reset, early close).
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    /// An unexpected status, with the start of the body (for diagnosis).
    #[error("HTTP status {code}: {body}")]
    HttpStatus { code: u16, body: String },
    #[error("S_ERROR: {0}")]
    SError(String),
    #[error("timeout")]
    Timeout,
}

impl From<RpcError> for CallError {
    fn from(error: RpcError) -> Self {
        match error {
            RpcError::Frame(FrameError::Io(e)) => CallError::Io(e),
            RpcError::Frame(FrameError::Closed | FrameError::PeerClosed) => {
                CallError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by peer while reading a DISET frame",
                ))
            }
            RpcError::Frame(e) => CallError::Protocol(format!("DISET frame: {e}")),
            RpcError::Decode(e) => CallError::Protocol(format!("DISET message: {e}")),
            RpcError::Refused(message) => CallError::SError(message),
        }
    }
}

/// Largest response head / body we accept; guards memory against a misbehaving server.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// A stream plus the bytes read from it but not consumed yet (kept across keep-alive replies).
pub(crate) struct Conn<S> {
    pub(crate) stream: S,
    buf: Vec<u8>,
}

impl<S> Conn<S> {
    pub(crate) fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
        }
    }

    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` buffered bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }
}

impl<S: AsyncRead + Unpin> Conn<S> {
    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    pub(crate) async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(READ_CHUNK);
        Ok(self.stream.read_buf(&mut self.buf).await? != 0)
    }

    /// Like [`Self::fill`], but end of stream is an error (the peer closed mid-message).
    pub(crate) async fn fill_or_eof(&mut self, what: &str) -> Result<(), CallError> {
        if self.fill().await? {
            Ok(())
        } else {
            Err(CallError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed by peer while reading {what}"),
            )))
        }
    }

    /// Reads one CRLF-terminated line (terminator removed), at most `max` bytes long.
    pub(crate) async fn read_line(&mut self, max: usize, what: &str) -> Result<Vec<u8>, CallError> {
        let mut scanned = 0;
        loop {
            if let Some(i) = find(&self.buf[scanned..], b"\r\n") {
                let end = scanned + i;
                let line = self.buf[..end].to_vec();
                self.consume(end + 2);
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(CallError::Protocol(format!(
                    "{what} longer than {max} bytes"
                )));
            }
            scanned = self.buf.len().saturating_sub(1);
            self.fill_or_eof(what).await?;
        }
    }

    /// Moves exactly `n` bytes of the stream into `out`.
    pub(crate) async fn read_exact_into(
        &mut self,
        n: usize,
        out: &mut Vec<u8>,
        what: &str,
    ) -> Result<(), CallError> {
        while self.buf.len() < n {
            self.fill_or_eof(what).await?;
        }
        out.extend_from_slice(&self.buf[..n]);
        self.consume(n);
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> Conn<S> {
    pub(crate) async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }
}

/// The fields of an S_OK/S_ERROR dict that decide success; `Value` is skipped unparsed.
#[derive(serde::Deserialize)]
struct Reply {
    #[serde(rename = "OK")]
    ok: bool,
    #[serde(rename = "Message", default)]
    message: Option<String>,
}

/// Interprets a DIRAC result dict: `"OK": true` or an S_ERROR carrying its message.
pub(crate) fn check_ok(payload: &[u8], what: &str) -> Result<(), CallError> {
    let reply: Reply = serde_json::from_slice(payload)
        .map_err(|e| CallError::Protocol(format!("{what} is not a JSON S_OK/S_ERROR dict: {e}")))?;
    if reply.ok {
        Ok(())
    } else {
        Err(CallError::SError(
            reply.message.unwrap_or_else(|| "(no Message)".to_owned()),
        ))
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Test helper: a reader that hands out its data a few bytes at a time, to exercise
/// message boundaries that fall anywhere inside a read.
#[cfg(test)]
pub(crate) struct SplitReader {
    pub(crate) data: Vec<u8>,
    pub(crate) step: usize,
}

#[cfg(test)]
impl AsyncRead for SplitReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data.drain(..n);
        std::task::Poll::Ready(Ok(()))
    }
}
