//! The tests' one HTTP/1.1 client, blocking, to 127.0.0.1: plain HTTP (the metrics port, the
//! test IdP, Prometheus) or HTTPS with openssl, trusting the test CA, with an optional client
//! chain (proxies included, which rustls-based tools refuse), optionally from another loopback
//! address. One request per connection (`Connection: close`), or several on a kept-alive
//! [`Connection`]. Replies with a Content-Length or chunked body; every read and write gives up
//! after a timeout.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use serde_json::Value;
use tokenmanager::x509::pki::CertifiedKey;

use crate::pki::TestPki;

/// How long a read or a write may wait, unless [`Client::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

pub const FORM: &str = "application/x-www-form-urlencoded";

/// One request: a method, a path (with its query), headers and a body.
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        let mut request = self.header("Content-Type", content_type);
        request.body = body.into();
        request
    }

    pub fn json(self, body: &str) -> Self {
        self.body("application/json", body)
    }

    /// An application/x-www-form-urlencoded body.
    pub fn form(self, fields: &[(&str, &str)]) -> Self {
        self.body(FORM, form_encode(fields))
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    pub fn basic_auth(self, user: &str, password: &str) -> Self {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("Authorization", &format!("Basic {credentials}"))
    }
}

/// A whole HTTP reply.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why no reply came.
#[derive(Debug)]
pub enum Failure {
    /// Nothing accepted the TCP connection.
    Connect(io::Error),
    /// The TLS handshake failed.
    Handshake(String),
    /// The connection broke, timed out or closed before a whole reply.
    Broken(io::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
            Self::Broken(e) => write!(f, "no whole reply: {e}"),
        }
    }
}

/// What the service answered to a JSON (or DIRAC HTTPS) call.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// No HTTP reply: the server refused the TLS handshake (a bad certificate, say) or closed
    /// the connection; what the client saw.
    TlsRefused(String),
    Http {
        status: u16,
        body: Value,
    },
}

impl Reply {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::TlsRefused(_) => None,
        }
    }

    pub fn body(&self) -> &Value {
        match self {
            Self::Http { body, .. } => body,
            Self::TlsRefused(_) => &Value::Null,
        }
    }
}

#[derive(Clone, Copy)]
enum Scheme<'a> {
    Http,
    Https {
        credential: Option<&'a CertifiedKey>,
    },
}

/// Who calls, and how: plain HTTP or HTTPS with an optional client certificate.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    scheme: Scheme<'a>,
    source: Option<IpAddr>,
    timeout: Duration,
}

impl<'a> Client<'a> {
    pub fn http() -> Client<'static> {
        Client {
            scheme: Scheme::Http,
            source: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn https(credential: Option<&'a CertifiedKey>) -> Self {
        Self {
            scheme: Scheme::Https { credential },
            ..Client::http()
        }
    }

    /// HTTPS without a client certificate.
    pub fn anonymous() -> Client<'static> {
        Client::https(None)
    }

    /// HTTPS with this client certificate (and its chain).
    pub fn with_certificate(credential: &'a CertifiedKey) -> Self {
        Self::https(Some(credential))
    }

    /// Connects from this local address (another loopback address, say).
    pub fn source(self, source: Option<IpAddr>) -> Self {
        Self { source, ..self }
    }

    pub fn timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// One request on a fresh connection.
    pub fn send(&self, port: u16, request: &Request) -> Result<Response, Failure> {
        let mut stream = BufReader::new(self.open(port)?);
        exchange(&mut stream, port, request, Keep::Close)
    }

    /// A call to the service, whose replies are JSON: `Null` for a body that is not.
    pub fn call(&self, port: u16, request: &Request) -> Reply {
        match self.send(port, request) {
            Ok(response) => Reply::Http {
                status: response.status,
                body: serde_json::from_slice(&response.body).unwrap_or(Value::Null),
            },
            Err(Failure::Connect(e)) => panic!("nothing listens on port {port}: {e}"),
            Err(failure) => Reply::TlsRefused(failure.to_string()),
        }
    }

    /// [`Client::call`] with a POST of a JSON body.
    pub fn post(&self, port: u16, path: &str, body: &str) -> Reply {
        self.call(port, &Request::post(path).json(body))
    }

    fn open(&self, port: u16) -> Result<Stream, Failure> {
        let tcp = connect(port, self.source).map_err(Failure::Connect)?;
        let configure = |tcp: &TcpStream| {
            tcp.set_read_timeout(Some(self.timeout))?;
            tcp.set_write_timeout(Some(self.timeout))?;
            tcp.set_nodelay(true)
        };
        configure(&tcp).map_err(Failure::Connect)?;
        match self.scheme {
            Scheme::Http => Ok(Stream::Plain(tcp)),
            Scheme::Https { credential } => connector(credential)
                .connect("127.0.0.1", tcp)
                .map(Stream::Tls)
                .map_err(|e| Failure::Handshake(e.to_string())),
        }
    }
}

/// A plain HTTP GET (the metrics port): the status and the body; panics without a reply.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let response = Client::http()
        .send(port, &Request::get(path))
        .unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"));
    (response.status, response.text())
}

/// A kept-alive HTTPS connection, for what must survive a reload.
pub struct Connection {
    port: u16,
    stream: BufReader<Stream>,
}

impl Connection {
    pub fn open(port: u16, credential: &CertifiedKey) -> Self {
        let stream = Client::with_certificate(credential)
            .open(port)
            .unwrap_or_else(|e| panic!("HTTPS on port {port}: {e}"));
        Self {
            port,
            stream: BufReader::new(stream),
        }
    }

    /// The serial number of the certificate the server presented.
    pub fn server_serial(&self) -> String {
        let Stream::Tls(tls) = self.stream.get_ref() else {
            unreachable!("a Connection is opened with TLS")
        };
        let cert = tls.ssl().peer_certificate().unwrap();
        cert.serial_number()
            .to_bn()
            .unwrap()
            .to_hex_str()
            .unwrap()
            .to_string()
    }

    /// A POST of a JSON body; the status and the JSON reply.
    pub fn post(&mut self, path: &str, body: &str) -> (u16, Value) {
        let request = Request::post(path).json(body);
        let response = exchange(&mut self.stream, self.port, &request, Keep::Alive)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let body = serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {}", response.text()));
        (response.status, body)
    }
}

/// One connector per credential for the whole run: building one loads the system CA bundle,
/// which costs more than the handshake itself and would make bursts measure the test client.
pub fn connector(credential: Option<&CertifiedKey>) -> SslConnector {
    static CONNECTORS: OnceLock<Mutex<HashMap<Vec<u8>, SslConnector>>> = OnceLock::new();
    let key = credential
        .map(|c| c.cert.to_der().unwrap())
        .unwrap_or_default();
    let mut connectors = CONNECTORS.get_or_init(Mutex::default).lock().unwrap();
    connectors
        .entry(key)
        .or_insert_with(|| {
            let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
            connector
                .cert_store_mut()
                .add_cert(TestPki::shared().ca.cert().to_owned())
                .unwrap();
            connector.set_verify(SslVerifyMode::PEER);
            if let Some(credential) = credential {
                connector.set_certificate(&credential.cert).unwrap();
                connector.set_private_key(&credential.key).unwrap();
                for issuer in &credential.chain {
                    connector.add_extra_chain_cert(issuer.clone()).unwrap();
                }
            }
            connector.build()
        })
        .clone()
}

/// application/x-www-form-urlencoded, which query strings take too.
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| {
            format!(
                "{}={}",
                form_encode_component(name),
                form_encode_component(value)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One name or value of [`form_encode`].
pub fn form_encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn connect(port: u16, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    match source {
        None => TcpStream::connect(target),
        Some(source) => {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(source, 0).into())?;
            socket.connect(&target.into())?;
            Ok(socket.into())
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(SslStream<TcpStream>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Keep {
    Alive,
    Close,
}

fn exchange(
    stream: &mut BufReader<Stream>,
    port: u16,
    request: &Request,
    keep: Keep,
) -> Result<Response, Failure> {
    write_request(stream.get_mut(), port, request, keep).map_err(Failure::Broken)?;
    read_response(stream).map_err(Failure::Broken)
}

fn write_request(
    stream: &mut impl Write,
    port: u16,
    request: &Request,
    keep: Keep,
) -> io::Result<()> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n",
        request.method, request.path
    );
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", request.body.len()));
    if keep == Keep::Close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    // One write, so that a TLS request goes out in one record.
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&request.body);
    stream.write_all(&bytes)?;
    stream.flush()
}

fn read_response(stream: &mut impl BufRead) -> io::Result<Response> {
    // TLS 1.3 reports a refused client certificate only here, at the first read.
    if stream.fill_buf()?.is_empty() {
        return Err(broken("connection closed without a response"));
    }
    let status_line = read_line(stream)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| broken(&format!("not an HTTP status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(stream)?;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = response
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = response.header("Content-Length").map(str::parse::<u64>);
    response.body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        read_chunked(stream)?
    } else if let Some(length) = length {
        let length = length.map_err(|_| broken("bad Content-Length"))?;
        read_exactly(stream, length)?
    } else {
        let mut body = Vec::new();
        stream.read_to_end(&mut body)?;
        body
    };
    Ok(response)
}

fn read_chunked(stream: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| broken("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(stream)?.is_empty() {}
            return Ok(body);
        }
        body.extend(read_exactly(stream, size)?);
        if !read_line(stream)?.is_empty() {
            return Err(broken("chunk longer than its size"));
        }
    }
}

fn read_exactly(stream: &mut impl BufRead, length: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    stream.by_ref().take(length).read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < length {
        return Err(broken("truncated body"));
    }
    Ok(bytes)
}

/// One line without its CRLF.
fn read_line(stream: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    stream.read_until(b'\n', &mut line)?;
    if line.pop() != Some(b'\n') {
        return Err(broken("connection closed mid-reply"));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(reply: &str) -> io::Result<Response> {
        read_response(&mut reply.as_bytes())
    }

    #[test]
    fn client_reads_content_length_chunked_and_close_delimited_bodies() {
        let sized =
            parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nX-A: b c \r\n\r\nhello, next reply")
                .unwrap();
        assert_eq!((sized.status, sized.text()), (200, "hello".into()));
        assert_eq!(sized.header("x-a"), Some("b c"));

        let chunked = parse(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
             4;ext=1\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (chunked.status, chunked.text()),
            (404, "wikipedia in\r\n\r\nchunks.".into())
        );

        let closed = parse("HTTP/1.0 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!(closed.text(), "to the end");
        let empty = parse("HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert!(empty.body.is_empty());
    }

    #[test]
    fn client_refuses_truncated_or_garbled_replies() {
        for reply in [
            "",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhell",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhell",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse(reply).is_err(), "{reply:?}");
        }
    }

    #[test]
    fn client_writes_one_request_with_its_length_and_connection() {
        let request = Request::post("/token?x=1")
            .form(&[("grant_type", "refresh_token"), ("scope", "a b/c*")])
            .basic_auth("id", "secret");
        let mut written = Vec::new();
        write_request(&mut written, 8443, &request, Keep::Close).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "POST /token?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Authorization: Basic aWQ6c2VjcmV0\r\nContent-Length: 39\r\n\
             Connection: close\r\n\r\ngrant_type=refresh_token&scope=a+b%2Fc*"
        );
        let mut kept = Vec::new();
        write_request(&mut kept, 80, &Request::get("/metrics"), Keep::Alive).unwrap();
        assert_eq!(
            String::from_utf8(kept).unwrap(),
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:80\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
