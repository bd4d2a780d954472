//! The HTTP/1.1 client: requests built once as bytes, and a response reader that handles
//! `Content-Length`, chunked and read-until-close bodies and tells whether the connection may
//! be reused.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::wire::{CallError, Conn, MAX_BODY, MAX_HEAD, find};
use tokio::io::AsyncRead;

/// A complete request, built once: every call sends the same bytes. `headers` follow `Host`; a
/// body gets its `Content-Length` last.
pub fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if let Some(body) = body {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    out
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// False when the server asked to close, or the body was delimited by closing.
    pub keep_alive: bool,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body as JSON; `Null` if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug, PartialEq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    keep_alive: bool,
    framing: Framing,
}

fn protocol(msg: impl Into<String>) -> CallError {
    CallError::Protocol(msg.into())
}

fn parse_head(head: &[u8]) -> Result<Head, CallError> {
    let text = std::str::from_utf8(head).map_err(|_| protocol("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => {
            return Err(protocol(format!(
                "not an HTTP/1.x status line: {:.80}",
                status_line
            )));
        }
    };
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format!("bad status code in {:.80}", status_line)))?;

    let mut keep_alive = !http10;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| protocol(format!("malformed header line {:.80}", line)))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| protocol(format!("bad Content-Length {value:.40}")))?;
            if length.is_some_and(|old| old != n) {
                return Err(protocol("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding decides how the body is delimited (RFC 9112 §6.3).
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(protocol(format!(
                "body of {n} bytes exceeds the {MAX_BODY} byte limit"
            )));
        }
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Head {
        status,
        keep_alive,
        framing,
    })
}

/// Reads one final (non-1xx) response.
pub(crate) async fn read_response<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
) -> Result<Response, CallError> {
    loop {
        let head = read_head(conn).await?;
        let mut body = Vec::new();
        match head.framing {
            Framing::None => {}
            Framing::Length(n) => conn.read_exact_into(n, &mut body, "response body").await?,
            Framing::Chunked => read_chunked(conn, &mut body).await?,
            Framing::UntilClose => {
                while conn.fill().await? {
                    if conn.buffered().len() > MAX_BODY {
                        return Err(protocol("response body exceeds the size limit"));
                    }
                }
                body.extend_from_slice(conn.buffered());
                conn.consume(conn.buffered().len());
            }
        }
        // Interim responses (100 Continue, 103 Early Hints) precede the real one.
        if !(100..200).contains(&head.status) {
            return Ok(Response {
                status: head.status,
                keep_alive: head.keep_alive,
                body,
            });
        }
    }
}

async fn read_head<S: AsyncRead + Unpin>(conn: &mut Conn<S>) -> Result<Head, CallError> {
    let mut scanned = 0;
    loop {
        if let Some(i) = find(&conn.buffered()[scanned..], b"\r\n\r\n") {
            let end = scanned + i;
            let head = parse_head(&conn.buffered()[..end])?;
            conn.consume(end + 4);
            return Ok(head);
        }
        if conn.buffered().len() > MAX_HEAD {
            return Err(protocol("response head exceeds 64 KiB"));
        }
        scanned = conn.buffered().len().saturating_sub(3);
        conn.fill_or_eof("response head").await?;
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
    body: &mut Vec<u8>,
) -> Result<(), CallError> {
    loop {
        let line = conn.read_line(1024, "chunk size line").await?;
        let line = String::from_utf8_lossy(&line);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| protocol(format!("bad chunk size {size_text:.20}")))?;
        if size == 0 {
            // Trailer fields end with an empty line.
            while !conn
                .read_line(MAX_HEAD, "chunked trailer")
                .await?
                .is_empty()
            {}
            return Ok(());
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(protocol("chunked body exceeds the size limit"));
        }
        conn.read_exact_into(size, body, "chunk data").await?;
        if !conn.read_line(2, "chunk terminator").await?.is_empty() {
            return Err(protocol("chunk data not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::SplitReader;
    use super::*;

    async fn parse_all(data: &[u8], step: usize) -> (Vec<Response>, Option<CallError>) {
        let mut conn = Conn::new(SplitReader {
            data: data.to_vec(),
            step,
        });
        let mut out = Vec::new();
        loop {
            match read_response(&mut conn).await {
                Ok(r) => {
                    let again = r.keep_alive;
                    out.push(r);
                    if !again {
                        return (out, None);
                    }
                }
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    const PIPELINE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 27\r\n\r\n{\"OK\": true, \"Value\": \"x\"}\n\
        HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n\
        HTTP/1.1 204 No Content\r\n\r\n\
        HTTP/1.1 401 Unauthorized\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno!";

    #[test]
    fn keep_alive_pipeline_at_any_split() {
        for step in [1, 2, 3, 7, 64, 100_000] {
            let (resps, err) = block_on(parse_all(PIPELINE, step));
            assert!(err.is_none(), "step {step}: {err:?}");
            let summary: Vec<_> = resps
                .iter()
                .map(|r| {
                    (
                        r.status,
                        r.keep_alive,
                        String::from_utf8_lossy(&r.body).into_owned(),
                    )
                })
                .collect();
            assert_eq!(
                summary,
                [
                    (200, true, "{\"OK\": true, \"Value\": \"x\"}\n".to_owned()),
                    (200, true, "hello, world".to_owned()),
                    (204, true, String::new()),
                    (401, false, "no!".to_owned()),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn body_until_close_and_http10() {
        let (r, err) = block_on(parse_all(b"HTTP/1.0 200 OK\r\n\r\nall of it", 4));
        assert!(err.is_none());
        assert_eq!(
            (r[0].status, r[0].keep_alive, &r[0].body[..]),
            (200, false, &b"all of it"[..])
        );

        let (r, _) = block_on(parse_all(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            4,
        ));
        assert!(r[0].keep_alive);
    }

    #[test]
    fn malformed_and_truncated_responses_are_errors() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        ] {
            let (r, err) = block_on(parse_all(bad, 5));
            assert!(
                r.is_empty() && matches!(err, Some(CallError::Protocol(_))),
                "{:?}: {err:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // The peer closing inside a message is an I/O error (e.g. a dropped keep-alive connection).
        let (r, err) = block_on(parse_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            3,
        ));
        assert!(r.is_empty() && matches!(err, Some(CallError::Io(_))));
        let (_, err) = block_on(parse_all(b"", 3));
        assert!(matches!(err, Some(CallError::Io(_))));
    }

    #[test]
    fn request_bytes() {
        let req = request(
            "POST",
            "h:8443",
            "/Framework/TokenManager",
            &[
                ("Connection", "close"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(b"a=1"),
        );
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "POST /Framework/TokenManager HTTP/1.1\r\nHost: h:8443\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=1"
        );
        assert_eq!(
            request("GET", "127.0.0.1", "/test/stats", &[], None),
            b"GET /test/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        );
    }
}
