//! The `tokenmanager-flood` binary: its attack process against local listeners that close what
//! they accept (the attack must reopen it, from the source address range), and its refusals.

#![expect(
    clippy::unwrap_used,
    reason = "a failed unwrap is a failed test, with its location"
)]

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tokenmanager-flood");

/// Each accepted connection's peer address and the bytes it sent.
type Seen = Arc<Mutex<Vec<(IpAddr, String)>>>;

/// Accepts connections and closes each after `keep` (reading what comes meanwhile); with
/// `tls`, after the handshake and the request head. The peers' addresses and the heads seen.
fn closing_listener(tls: Option<Arc<SslAcceptor>>, keep: Duration) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let (tls, record) = (tls.clone(), Arc::clone(&record));
            std::thread::spawn(move || {
                let peer = tcp.peer_addr().unwrap().ip();
                tcp.set_read_timeout(Some(keep)).unwrap();
                let deadline = Instant::now() + keep;
                let mut got = Vec::new();
                let mut buf = [0u8; 256];
                let mut read_all = |stream: &mut dyn Read| {
                    while Instant::now() < deadline {
                        match stream.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(_) => {}
                        }
                    }
                };
                match tls {
                    Some(acceptor) => {
                        if let Ok(mut stream) = acceptor.accept(tcp) {
                            read_all(&mut stream);
                        }
                    }
                    None => {
                        let mut tcp = tcp;
                        read_all(&mut tcp);
                    }
                }
                record
                    .lock()
                    .unwrap()
                    .push((peer, String::from_utf8_lossy(&got).into_owned()));
            });
        }
    });
    (port, seen)
}

fn self_signed_acceptor() -> Arc<SslAcceptor> {
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = cert.build();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_private_key(&key).unwrap();
    b.set_certificate(&cert).unwrap();
    Arc::new(b.build())
}

fn worker(args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("__attack-worker")
        .args([
            "--host",
            "127.0.0.1",
            "--sources",
            "127.0.0.2-127.0.0.4",
            "--connect-timeout",
            "2s",
            "--reopen-delay",
            "0ms",
            "--drip-interval",
            "50ms",
            "--path",
            "/Framework/TokenManager",
            "--content-length",
            "100000",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn the_attack_reopens_what_the_server_closes() {
    let (plain, plain_seen) = closing_listener(None, Duration::from_millis(300));
    let (tls, tls_seen) =
        closing_listener(Some(self_signed_acceptor()), Duration::from_millis(400));
    let mut child = worker(&[
        "--https-port",
        &tls.to_string(),
        "--dips-port",
        &plain.to_string(),
        "--idle-dips",
        "6",
        "--slow-body",
        "3",
        "--first-slot",
        "1",
    ]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ready_seen = false;
    let started = Instant::now();
    // Held for a while: each connection is closed every 300-400 ms and must come back.
    while started.elapsed() < Duration::from_millis(1800) {
        let status: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        ready_seen |= status["ready"] == true;
    }
    drop(child.stdin.take()); // the release
    let last = loop {
        let status: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if status["final"] == true {
            break status;
        }
    };
    assert!(child.wait().unwrap().success());
    assert!(ready_seen, "{last}");
    let dips = &last["attack"]["idle_dips"];
    let slow = &last["attack"]["slow_body"];
    assert_eq!(dips["requested"], 6, "{last}");
    assert_eq!(slow["requested"], 3, "{last}");
    assert_eq!(last["attack"]["idle_https"]["requested"], 0, "{last}");
    for (kind, counters) in [("idle_dips", dips), ("slow_body", slow)] {
        let (opens, reopens, closed) = (
            counters["opens"].as_u64().unwrap(),
            counters["reopens"].as_u64().unwrap(),
            counters["closed_by_server"].as_u64().unwrap(),
        );
        let requested = counters["requested"].as_u64().unwrap();
        assert!(reopens >= 2 * requested, "{kind}: {counters}");
        assert_eq!(opens, requested + reopens, "{kind}: {counters}");
        assert!(closed >= reopens, "{kind}: {counters}");
        assert_eq!(counters["connect_errors"], 0, "{kind}: {counters}");
        assert_eq!(counters["handshake_errors"], 0, "{kind}: {counters}");
    }
    assert!(slow["body_bytes"].as_u64().unwrap() >= 3 * 3, "{slow}");
    // Source addresses round-robin over the range, from slot 1 on: .3, .4, .2, ...
    let plain_seen = plain_seen.lock().unwrap();
    let peers: std::collections::BTreeSet<IpAddr> = plain_seen.iter().map(|(p, _)| *p).collect();
    let range: std::collections::BTreeSet<IpAddr> = (2..=4)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    assert_eq!(peers, range);
    assert!(
        plain_seen.iter().all(|(_, got)| got.is_empty()),
        "idle sent bytes"
    );
    // Slow-body: the head, then the body a byte at a time.
    let tls_seen = tls_seen.lock().unwrap();
    assert!(!tls_seen.is_empty());
    for (_, got) in tls_seen.iter() {
        assert!(
            got.starts_with("POST /Framework/TokenManager HTTP/1.1\r\n")
                && got.contains("\r\nContent-Length: 100000\r\n\r\n"),
            "{got:?}"
        );
        let body = got.split_once("\r\n\r\n").unwrap().1;
        assert!(
            body.len() < 20 && body.bytes().all(|b| b == b'a'),
            "{got:?}"
        );
    }
}

#[test]
fn an_attack_that_cannot_fit_is_refused() {
    let output = Command::new(BIN)
        .args([
            "--https-port",
            "1",
            "--dips-port",
            "2",
            "--pid",
            "1",
            "--cert",
            "none.pem",
            "--idle-https",
            "100000000",
            "--attack-processes",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("100000000 attack connections in 1 processes")
            && stderr.contains("use --attack-processes"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_server_is_refused() {
    let output = Command::new(BIN)
        .args([
            "--https-port",
            "1",
            "--dips-port",
            "2",
            "--pid",
            "999999999",
            "--cert",
            "none.pem",
            "--scenarios",
            "flood",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no process 999999999"), "{stderr}");
}
