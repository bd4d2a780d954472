//! A minimal HTTPS client for the tests: openssl with an optional client chain (proxies
//! included, which rustls-based tools refuse), one request per connection, optionally from
//! another loopback address.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use serde_json::Value;
use tokenmanager::x509::pki::CertifiedKey;

use crate::pki::TestPki;

#[derive(Debug, PartialEq)]
pub enum Reply {
    /// The server refused the TLS handshake (bad certificate); what the client saw.
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

pub struct Client<'a> {
    pub credential: Option<&'a CertifiedKey>,
    pub source: Option<IpAddr>,
}

impl Client<'_> {
    pub fn anonymous() -> Client<'static> {
        Client {
            credential: None,
            source: None,
        }
    }

    pub fn post(&self, port: u16, path: &str, body: &str) -> Reply {
        self.request(port, "POST", path, body)
    }

    pub fn request(&self, port: u16, verb: &str, path: &str, body: &str) -> Reply {
        self.request_with(port, verb, path, body, "Content-Type: application/json\r\n")
    }

    /// A POST of a form body, as DIRAC's HTTPS client sends it.
    pub fn post_form(&self, port: u16, path: &str, content_type: &str, body: &str) -> Reply {
        let header = format!("Content-Type: {content_type}\r\n");
        self.request_with(port, "POST", path, body, &header)
    }

    /// A POST with `Authorization: Bearer <token>`.
    pub fn post_bearer(&self, port: u16, path: &str, body: &str, token: &str) -> Reply {
        self.request_with(
            port,
            "POST",
            path,
            body,
            &format!("Content-Type: application/json\r\nAuthorization: Bearer {token}\r\n"),
        )
    }

    fn request_with(&self, port: u16, verb: &str, path: &str, body: &str, headers: &str) -> Reply {
        let tcp = connect(port, self.source);
        let ssl = connector(self.credential).configure().unwrap();
        let mut stream = match ssl.connect("127.0.0.1", tcp) {
            Ok(stream) => stream,
            Err(e) => return Reply::TlsRefused(e.to_string()),
        };
        let request = format!(
            "{verb} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if let Err(e) = stream.write_all(request.as_bytes()) {
            return Reply::TlsRefused(e.to_string());
        }
        let mut response = Vec::new();
        // TLS 1.3 reports a refused client certificate only at the first read.
        if let Err(e) = stream.read_to_end(&mut response)
            && response.is_empty()
        {
            return Reply::TlsRefused(e.to_string());
        }
        let text = String::from_utf8_lossy(&response);
        let Some(status) = text.split(' ').nth(1).and_then(|s| s.parse().ok()) else {
            return Reply::TlsRefused(format!("no HTTP reply: {text}"));
        };
        let body = text
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body).ok())
            .unwrap_or(Value::Null);
        Reply::Http { status, body }
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

fn connect(port: u16, source: Option<IpAddr>) -> TcpStream {
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    match source {
        None => TcpStream::connect(target).unwrap(),
        Some(source) => {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
            socket.connect(&target.into()).unwrap();
            socket.into()
        }
    }
}

/// A kept-alive HTTPS connection, for what must survive a reload.
pub struct Connection {
    stream: openssl::ssl::SslStream<TcpStream>,
}

impl Connection {
    pub fn open(port: u16, credential: &CertifiedKey) -> Self {
        let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
        connector
            .cert_store_mut()
            .add_cert(TestPki::shared().ca.cert().to_owned())
            .unwrap();
        connector.set_certificate(&credential.cert).unwrap();
        connector.set_private_key(&credential.key).unwrap();
        for issuer in &credential.chain {
            connector.add_extra_chain_cert(issuer.clone()).unwrap();
        }
        let stream = connector
            .build()
            .connect("127.0.0.1", connect(port, None))
            .unwrap();
        Self { stream }
    }

    /// The serial number of the certificate the server presented.
    pub fn server_serial(&self) -> String {
        let cert = self.stream.ssl().peer_certificate().unwrap();
        cert.serial_number()
            .to_bn()
            .unwrap()
            .to_hex_str()
            .unwrap()
            .to_string()
    }

    pub fn post(&mut self, path: &str, body: &str) -> (u16, Value) {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap();
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }
}
