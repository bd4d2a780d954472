//! DISET framing (`BaseTransport.sendData`/`receiveData`):
//! `[b"dka"] <decimal payload length> ":" <payload>`.

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::mixed::{Encoding, encode_message};
use super::{EncodeError, Value};

/// Limit DIRAC applies to the action proposal (`receiveData(1024)`).
pub const PROPOSAL_LIMIT: usize = 1024;

/// Python reads in 16 KiB chunks; we grow the buffer by at most this much
/// per read so a peer's declared length never decides our allocation.
const READ_CHUNK: usize = 64 * 1024;

/// `u64::MAX` has 20 digits; 19 keep every accepted length in range.
const MAX_LENGTH_DIGITS: usize = 19;

const KEEP_ALIVE_MAGIC: &[u8] = b"dka";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Sent with the `dka` prefix: a keep-alive ping or pong, not a message
    /// of the conversation.
    pub keep_alive: bool,
    pub payload: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum FrameError {
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// DIRAC's text for a connection lost inside a frame.
    #[error("Peer closed connection")]
    PeerClosed,
    #[error("Read limit exceeded ({limit} chars)")]
    LimitExceeded { limit: usize },
    #[error("malformed frame header")]
    BadHeader,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame. Header bytes are read one at a time, so hand in a
/// buffered reader (e.g. `tokio::io::BufReader`) for a socket.
///
/// The declared length must have 1 to 19 ASCII digits (no sign, spaces or
/// `+`) and not exceed `max_payload`; the payload buffer only grows as data
/// arrives.
pub async fn read_frame<R>(reader: &mut R, max_payload: usize) -> Result<Frame, FrameError>
where
    R: AsyncRead + Unpin,
{
    let first = match read_byte(reader).await? {
        Some(b) => b,
        None => return Err(FrameError::Closed),
    };
    let (keep_alive, mut next) = if first == KEEP_ALIVE_MAGIC[0] {
        for &expected in &KEEP_ALIVE_MAGIC[1..] {
            if require_byte(reader).await? != expected {
                return Err(FrameError::BadHeader);
            }
        }
        (true, require_byte(reader).await?)
    } else {
        (false, first)
    };
    let mut length: u64 = 0;
    let mut digits = 0;
    while next != b':' {
        if !next.is_ascii_digit() || digits == MAX_LENGTH_DIGITS {
            return Err(FrameError::BadHeader);
        }
        length = length * 10 + u64::from(next - b'0');
        digits += 1;
        next = require_byte(reader).await?;
    }
    if digits == 0 {
        return Err(FrameError::BadHeader);
    }
    let length = match usize::try_from(length) {
        Ok(n) if n <= max_payload => n,
        _ => return Err(FrameError::LimitExceeded { limit: max_payload }),
    };
    let mut payload = Vec::new();
    while payload.len() < length {
        let start = payload.len();
        let want = (length - start).min(READ_CHUNK);
        payload.resize(start + want, 0);
        let n = reader.read(&mut payload[start..]).await?;
        payload.truncate(start + n);
        if n == 0 {
            return Err(FrameError::PeerClosed);
        }
    }
    Ok(Frame {
        keep_alive,
        payload,
    })
}

async fn read_byte<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<u8>, FrameError> {
    let mut byte = [0u8];
    match reader.read(&mut byte).await? {
        0 => Ok(None),
        _ => Ok(Some(byte[0])),
    }
}

async fn require_byte<R: AsyncRead + Unpin>(reader: &mut R) -> Result<u8, FrameError> {
    read_byte(reader).await?.ok_or(FrameError::PeerClosed)
}

/// `<len>:<payload>`.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = payload.len().to_string().into_bytes();
    out.push(b':');
    out.extend_from_slice(payload);
    out
}

/// `dka<len>:<payload>`.
pub fn encode_keep_alive(payload: &[u8]) -> Vec<u8> {
    [KEEP_ALIVE_MAGIC, &encode_frame(payload)].concat()
}

/// The id of a keep-alive ping, i.e. a message `S_OK({"id": id, "kaping":
/// <truthy>})`; `None` for pongs and anything else.
pub fn keep_alive_ping_id(message: &Value) -> Option<&Value> {
    let body = message.ok_value().ok()?;
    let id = body.get("id")?;
    body.get("kaping")?.is_truthy().then_some(id)
}

/// The complete pong frame answering a ping with `id`, in `encoding` (that of
/// the ping).
pub fn keep_alive_pong(id: &Value, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
    let pong = Value::s_ok(Value::Dict(vec![
        (Value::Str("id".into()), id.clone()),
        (Value::Str("kaping".into()), Value::Bool(false)),
    ]));
    Ok(encode_keep_alive(&encode_message(&pong, encoding)?))
}

#[cfg(test)]
mod tests {
    use super::super::mixed::decode_message;
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn read(bytes: &[u8], limit: usize) -> Result<Frame, FrameError> {
        block_on(read_frame(&mut &bytes[..], limit))
    }

    #[test]
    fn golden_frame() {
        let payload = br#"{"OK": true, "Value": null}"#;
        let wire = b"27:{\"OK\": true, \"Value\": null}";
        assert_eq!(encode_frame(payload), wire);
        let frame = read(wire, PROPOSAL_LIMIT).expect("frame");
        assert_eq!(
            frame,
            Frame {
                keep_alive: false,
                payload: payload.to_vec()
            }
        );
        let (v, enc) = decode_message(&frame.payload).expect("message");
        assert_eq!((v, enc), (Value::s_ok(Value::None), Encoding::Json));
    }

    #[test]
    fn keep_alive_then_real_frame() {
        let wire =
            b"dka42:ds2:OKb1s5:Valueds2:ids4:abc0s6:kapingb1ee27:{\"OK\": true, \"Value\": null}";
        block_on(async {
            let mut reader = &wire[..];
            let ka = read_frame(&mut reader, PROPOSAL_LIMIT).await.expect("ping");
            assert!(ka.keep_alive);
            let (msg, enc) = decode_message(&ka.payload).expect("ping message");
            assert_eq!(enc, Encoding::DEncode);
            let id = keep_alive_ping_id(&msg).expect("is a ping");
            assert_eq!(id, &Value::Str("abc0".into()));
            assert_eq!(
                keep_alive_pong(id, enc).expect("pong"),
                b"dka42:ds2:OKb1s5:Valueds2:ids4:abc0s6:kapingb0ee"
            );
            assert_eq!(
                keep_alive_pong(id, Encoding::Json).expect("pong"),
                b"dka54:{\"OK\": true, \"Value\": {\"id\": \"abc0\", \"kaping\": false}}"
            );
            let real = read_frame(&mut reader, PROPOSAL_LIMIT).await.expect("real");
            assert!(!real.keep_alive);
            let (msg, _) = decode_message(&real.payload).expect("message");
            assert_eq!(keep_alive_ping_id(&msg), None);
            assert!(matches!(
                read_frame(&mut reader, PROPOSAL_LIMIT).await,
                Err(FrameError::Closed)
            ));
        });
    }

    #[test]
    fn refusals() {
        assert!(matches!(read(b"", 10), Err(FrameError::Closed)));
        assert!(matches!(read(b"5:abc", 10), Err(FrameError::PeerClosed)));
        assert!(matches!(read(b"12", 10), Err(FrameError::PeerClosed)));
        assert!(matches!(read(b"dk", 10), Err(FrameError::PeerClosed)));
        for bad in [
            &b":x"[..],
            b"+1:x",
            b" 1:x",
            b"-1:x",
            b"1a:x",
            b"dkx1:x",
            b"x",
        ] {
            assert!(
                matches!(read(bad, 10), Err(FrameError::BadHeader)),
                "{bad:?}"
            );
        }
        let overflow = [&b"99999999999999999999:"[..], b"x"].concat();
        assert!(matches!(read(&overflow, 10), Err(FrameError::BadHeader)));
        let err = read(b"1025:x", PROPOSAL_LIMIT).expect_err("too long");
        assert_eq!(err.to_string(), "Read limit exceeded (1024 chars)");
        assert!(matches!(read(b"0:", 10), Ok(Frame { payload, .. }) if payload.is_empty()));
    }

    #[test]
    fn huge_declared_length_fails_without_allocating_it() {
        // Declares ~1 EB but sends 3 bytes: must fail on EOF, having
        // allocated only what arrived (a 1 EB allocation would abort).
        let err = read(b"999999999999999999:abc", usize::MAX).expect_err("eof");
        assert!(matches!(err, FrameError::PeerClosed));
    }

    #[test]
    fn large_payload_in_chunks() {
        let payload = vec![b'x'; 3 * READ_CHUNK + 7];
        let wire = encode_frame(&payload);
        assert_eq!(read(&wire, usize::MAX).expect("frame").payload, payload);
    }
}
