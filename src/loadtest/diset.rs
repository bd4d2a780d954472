//! DISET (`dips://`) client side: `<len>:<payload>` framing with optional `dka` keep-alive
//! frames, JSON payloads, and the four-message RPC conversation (proposal, accept, args, result).

use super::encode::python_json;
use super::wire::{CallError, Conn, MAX_BODY, check_ok};
use crate::protocol::dirac::codec::frame::{encode_frame, keep_alive_ping_id, keep_alive_pong};
use crate::protocol::dirac::codec::mixed::decode_message;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

const KEEPALIVE_PREFIX: &[u8] = b"dka";
/// Longest decimal length accepted before the `:` (DIRAC's receiver also bounds this).
const MAX_LEN_DIGITS: usize = 20;

/// The two client messages of an RPC, framed once and replayed on every call.
pub(super) struct Conversation {
    proposal: Vec<u8>,
    args: Vec<u8>,
}

impl Conversation {
    pub(super) fn new(service: &str, method: &str, args: &Value) -> Self {
        let proposal = json!({"OK": true, "Value": [[service, "None", "unknown"], ["RPC", method], "", "loadtest"]});
        Conversation {
            proposal: encode_frame(&python_json(&proposal)),
            args: encode_frame(&python_json(&json!({"OK": true, "Value": args}))),
        }
    }

    /// Runs one RPC on a fresh connection; the caller closes it afterwards.
    pub(super) async fn call<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<S>,
    ) -> Result<(), CallError> {
        conn.send(&self.proposal).await?;
        check_ok(&read_message(conn).await?, "proposal reply")?;
        conn.send(&self.args).await?;
        check_ok(&read_message(conn).await?, "result")
    }
}

/// Reads one frame; returns whether it had the `dka` prefix, and its payload.
pub(super) async fn read_frame<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
) -> Result<(bool, Vec<u8>), CallError> {
    loop {
        let buf = conn.buffered();
        let keepalive = buf.starts_with(KEEPALIVE_PREFIX);
        let start = if keepalive { KEEPALIVE_PREFIX.len() } else { 0 };
        // The `dka` prefix may itself be split across reads.
        let undecided = buf.len() < KEEPALIVE_PREFIX.len() && KEEPALIVE_PREFIX.starts_with(buf);
        if !undecided {
            let digits = &buf[start..];
            if let Some(colon) = digits.iter().position(|&b| b == b':') {
                let len = std::str::from_utf8(&digits[..colon])
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| {
                        CallError::Protocol(format!(
                            "bad DISET frame length {:?}",
                            String::from_utf8_lossy(&digits[..colon.min(24)])
                        ))
                    })?;
                if len > MAX_BODY {
                    return Err(CallError::Protocol(format!(
                        "DISET frame of {len} bytes exceeds the size limit"
                    )));
                }
                conn.consume(start + colon + 1);
                let mut payload = Vec::with_capacity(len);
                conn.read_exact_into(len, &mut payload, "DISET frame")
                    .await?;
                return Ok((keepalive, payload));
            }
            if digits.len() > MAX_LEN_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
                return Err(CallError::Protocol(format!(
                    "not a DISET frame: {:?}",
                    String::from_utf8_lossy(&buf[..buf.len().min(24)])
                )));
            }
        }
        conn.fill_or_eof("DISET frame").await?;
    }
}

/// Reads the next real message, answering keep-alive pings on the way (DIRAC peers may
/// ping a transport that looks idle, e.g. while the server works on a slow call).
async fn read_message<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
) -> Result<Vec<u8>, CallError> {
    loop {
        let (keepalive, payload) = read_frame(conn).await?;
        if !keepalive {
            return Ok(payload);
        }
        let (ka, encoding) = decode_message(&payload)
            .map_err(|e| CallError::Protocol(format!("bad keep-alive frame: {e}")))?;
        if let Some(id) = keep_alive_ping_id(&ka) {
            let pong = keep_alive_pong(id, encoding).map_err(|e| {
                CallError::Protocol(format!("cannot answer a keep-alive ping: {e}"))
            })?;
            conn.send(&pong).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::SplitReader;
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Scripted peer: reads come from `input` (split), writes are recorded.
    struct Peer {
        input: SplitReader,
        written: Vec<u8>,
    }

    impl AsyncRead for Peer {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.input).poll_read(cx, buf)
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

    fn run(server_bytes: &[u8], step: usize) -> (Result<(), CallError>, Vec<u8>) {
        let conv = Conversation::new("Framework/TokenManager", "echo", &json!(["hello"]));
        let mut conn = Conn::new(Peer {
            input: SplitReader {
                data: server_bytes.to_vec(),
                step,
            },
            written: Vec::new(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let result = rt.block_on(conv.call(&mut conn));
        (result, conn.stream.written)
    }

    fn frames(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (prefix, payload) in parts {
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(&encode_frame(payload.as_bytes()));
        }
        out
    }

    #[test]
    fn conversation_with_ping_at_any_split() {
        let server = frames(&[
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
        // Same length arithmetic as the capture in Appendix D.2.5 (99 bytes for "dirac"/"9.1.22").
        assert!(expected.starts_with(b"103:{"));
        for step in [1, 2, 4, 30, 1000] {
            let (result, written) = run(&server, step);
            assert!(result.is_ok(), "step {step}: {result:?}");
            assert_eq!(
                String::from_utf8(written).unwrap(),
                String::from_utf8(expected.clone()).unwrap(),
                "step {step}"
            );
        }
    }

    #[test]
    fn errors_by_kind() {
        let unauthorized = frames(&[(
            "",
            r#"{"OK": false, "Errno": 1111, "Message": "Unauthorized query ( 1111 )"}"#,
        )]);
        assert!(
            matches!(run(&unauthorized, 7).0, Err(CallError::SError(m)) if m == "Unauthorized query ( 1111 )")
        );
        assert!(matches!(
            run(b"27:{\"OK\": true, \"Value\": null}5:nope!", 3).0,
            Err(CallError::Protocol(_))
        ));
        assert!(matches!(
            run(b"HTTP/1.1 400 Bad Request\r\n", 3).0,
            Err(CallError::Protocol(_))
        ));
        assert!(matches!(
            run(b"27:{\"OK\": true", 3).0,
            Err(CallError::Io(_))
        ));
    }
}
