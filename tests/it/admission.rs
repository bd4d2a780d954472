//! Connection admission on a small scale, in the service's process: idle sockets closed, DISET
//! slots taken only after a verified handshake, the oldest unidentified connection shed for a
//! newcomer, the per-address cap, small and quick bodies for anonymous callers, keep-alive frames
//! bounded. The flood at scale runs against the release binary in its own CI stage
//! (tests/flood/run.sh), where it cannot disturb the other tests.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use tokenmanager::config::Backend;

use crate::app::TestApp;
use crate::client::{Client, FORM, Request, connector, form_encode, http_get};
use crate::dirac::{Diset, proposal, proxy};
use crate::metrics::sample;
use crate::process;
use crate::support::TestDb;

/// A TCP connection from `source` (127.0.0.x) that sends nothing.
fn idle_socket(port: u16, source: u8) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, source)), 0);
    socket.bind(&source.into()).unwrap();
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect(&server.into()).unwrap();
    socket.into()
}

/// How the server treats a socket within `wait`: Some(elapsed) once it closed it, None if still
/// open.
fn closed_within(socket: &mut TcpStream, wait: Duration) -> Option<Duration> {
    socket.set_read_timeout(Some(wait)).unwrap();
    read_reports_close(socket)
}

/// [`closed_within`] for a TLS connection (whose session tickets a raw read would see as data).
fn tls_closed_within(
    stream: &mut openssl::ssl::SslStream<TcpStream>,
    wait: Duration,
) -> Option<Duration> {
    stream.get_ref().set_read_timeout(Some(wait)).unwrap();
    read_reports_close(stream)
}

fn read_reports_close(stream: &mut impl Read) -> Option<Duration> {
    let started = Instant::now();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => Some(started.elapsed()),
        Ok(_) => panic!("the server sent data to a connection that asked nothing"),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        // Reset (closed with unread data) or, over TLS, EOF without close_notify: still closed.
        Err(_) => Some(started.elapsed()),
    }
}

fn shed(app: &TestApp, listener: &str, reason: &str) -> f64 {
    let (_, exposition) = http_get(app.metrics, "/metrics");
    sample(
        &exposition,
        &format!(
            r#"tokenmanager_connections_shed_total{{listener="{listener}",reason="{reason}"}}"#
        ),
    )
    .unwrap_or_else(|| panic!("no shed series for {listener} {reason}"))
}

fn dirac_ping(app: &TestApp) -> u16 {
    let who = proxy("full", "g_full");
    let body = form_encode(&[("method", "ping"), ("args", "[]")]);
    let request = Request::post("/Framework/TokenManager").body(FORM, body);
    let reply = Client::with_certificate(&who).call(app.https, &request);
    reply.status().unwrap_or(0)
}

fn diset_echo(app: &TestApp) -> serde_json::Value {
    let who = proxy("full", "g_full");
    let mut diset = Diset::connect(app.dips, Some(&who)).unwrap();
    diset.send(proposal("echo", r#""""#).as_bytes());
    assert_eq!(diset.receive_json(), json!({"OK": true, "Value": null}));
    diset.send(br#"{"OK": true, "Value": ["through"]}"#);
    diset.receive_json()
}

#[test]
fn a_socket_that_sends_nothing_is_closed_after_first_byte_timeout_on_every_listener() {
    let db = TestDb::new(Backend::Sqlite);
    let app = process::spawn_app(&db, |c| {
        c.service()
            .set("FirstByteTimeout", 1)
            .set("HandshakeTimeout", 30);
    });
    for (listener, port) in [
        ("https", app.https),
        ("dips", app.dips),
        ("metrics", app.metrics),
    ] {
        let mut socket = idle_socket(port, 1);
        let closed = closed_within(&mut socket, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the idle {listener} socket is still open after 10 s"));
        assert!(
            closed >= Duration::from_millis(800),
            "{listener}: closed after {closed:?}, before FirstByteTimeout"
        );
        assert!(shed(&app, listener, "idle_timeout") >= 1.0, "{listener}");
    }
}

#[test]
fn idle_sockets_do_not_hold_the_diset_slots_of_callers_with_certificates() {
    let db = TestDb::new(Backend::Sqlite);
    let app = process::spawn_app(&db, |c| {
        c.service()
            .set("MaxThreads", 1)
            .set("FirstByteTimeout", 60)
            .set("HandshakeTimeout", 60);
    });
    // Before, each of these took a MaxThreads slot before its handshake and kept it for
    // HandshakeTimeout.
    let _idle: Vec<TcpStream> = (0..20).map(|_| idle_socket(app.dips, 2)).collect();
    let started = Instant::now();
    assert_eq!(diset_echo(&app), json!({"OK": true, "Value": "through"}));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the call waited {:?} behind idle sockets",
        started.elapsed()
    );
}

#[test]
fn a_diset_call_that_finds_no_free_slot_in_queue_timeout_is_answered_busy() {
    let db = TestDb::new(Backend::Sqlite);
    let app = process::spawn_app(&db, |c| {
        c.service()
            .set("MaxThreads", 1)
            .set("QueueTimeout", 1)
            .set("PacketTimeout", 30);
    });
    let who = proxy("full", "g_full");
    // Handshaken and silent: it holds the only slot for PacketTimeout.
    let _holder = Diset::connect(app.dips, Some(&who)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut waiting = Diset::connect(app.dips, Some(&who)).unwrap();
    waiting.send(proposal("echo", r#""""#).as_bytes());
    let reply = waiting.receive_json();
    assert_eq!(reply["OK"], false, "{reply}");
    assert!(
        reply["Message"].as_str().unwrap().contains("Service busy"),
        "{reply}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(waiting.receive(), None, "closed after the refusal");
    assert!(shed(&app, "dips", "queue_timeout") >= 1.0);
}

#[test]
fn keep_alive_frames_cannot_stand_in_for_the_proposal() {
    let db = TestDb::new(Backend::Sqlite);
    let app = process::spawn_app(&db, |c| {
        c.service().set("PacketTimeout", 30);
    });
    let who = proxy("full", "g_full");
    let mut diset = Diset::connect(app.dips, Some(&who)).unwrap();
    let ping = br#"{"OK": true, "Value": {"id": "abc0", "kaping": true}}"#;
    let mut pongs = 0;
    for _ in 0..10 {
        if diset.try_send_keep_alive(ping).is_err() || diset.receive().is_none() {
            break;
        }
        pongs += 1;
    }
    assert_eq!(
        pongs, 4,
        "four pings are answered, then the peer is dropped"
    );
}

/// A TLS connection without a client certificate, from `source`; Err if the server closed it
/// before the handshake.
fn anonymous_tls(port: u16, source: u8) -> Result<openssl::ssl::SslStream<TcpStream>, String> {
    connector(None)
        .connect("127.0.0.1", idle_socket(port, source))
        .map_err(|e| e.to_string())
}

#[test]
fn a_full_listener_sheds_its_oldest_unidentified_connection_for_a_newcomer() {
    let db = TestDb::new(Backend::Sqlite);
    let app = process::spawn_app(&db, |c| {
        c.service()
            .set("MaxUnidentifiedConnections", 5)
            .set("MaxUnidentifiedPerAddress", 0)
            .set("FirstByteTimeout", 60)
            .set("RequestHeadTimeout", 60);
    });
    let mut anonymous: Vec<_> = (0..5)
        .map(|_| anonymous_tls(app.https, 3).unwrap())
        .collect();
    // Idle sockets are bounded by the descriptor budget, not by this cap.
    let mut idle: Vec<TcpStream> = (0..20).map(|_| idle_socket(app.https, 4)).collect();
    std::thread::sleep(Duration::from_millis(300));

    assert_eq!(dirac_ping(&app), 200, "the identified caller gets through");
    assert!(
        tls_closed_within(&mut anonymous[0], Duration::from_secs(5)).is_some(),
        "the oldest connection without a certificate made room for the caller's handshake"
    );
    for stream in &mut anonymous[1..] {
        assert_eq!(
            tls_closed_within(stream, Duration::from_millis(200)),
            None,
            "only the oldest is shed"
        );
    }
    for socket in &mut idle {
        assert_eq!(closed_within(socket, Duration::from_millis(50)), None);
    }
    assert_eq!(shed(&app, "https", "unidentified_limit"), 1.0);
}

#[test]
fn one_address_cannot_hold_more_than_its_share_of_connections_without_certificates() {
    let db = TestDb::new(Backend::Sqlite);
    let app = process::spawn_app(&db, |c| {
        c.service()
            .set("MaxUnidentifiedPerAddress", 3)
            .set("FirstByteTimeout", 60)
            .set("RequestHeadTimeout", 60);
    });
    let _held: Vec<_> = (0..3)
        .map(|_| anonymous_tls(app.https, 4).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        anonymous_tls(app.https, 4).is_err(),
        "a fourth connection without a certificate from one address is refused"
    );
    assert!(
        anonymous_tls(app.https, 5).is_ok(),
        "another address is not affected"
    );
    // Idle sockets do not count: a burst behind one address is idle for a moment.
    let _idle: Vec<TcpStream> = (0..10).map(|_| idle_socket(app.https, 4)).collect();
    assert!(shed(&app, "https", "address_limit") >= 1.0);
    assert_eq!(
        dirac_ping(&app),
        200,
        "callers with certificates are not affected"
    );
}

/// A TLS connection without a client certificate that sends `head` then `body`, and the status
/// of the reply.
fn anonymous_post(app: &TestApp, content_length: usize, body: &[u8]) -> (u16, Duration) {
    let tcp = TcpStream::connect(("127.0.0.1", app.https)).unwrap();
    let mut tls = connector(None).connect("127.0.0.1", tcp).unwrap();
    let head = format!(
        "POST /Framework/TokenManager HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\nContent-Length: {content_length}\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(body).unwrap();
    let started = Instant::now();
    tls.get_ref()
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buffer[..n]),
        }
    }
    let status = String::from_utf8_lossy(&reply)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed())
}

#[test]
fn callers_without_credentials_get_a_small_body_and_a_short_deadline() {
    let db = TestDb::new(Backend::Sqlite);
    let app = process::spawn_app(&db, |c| {
        c.service()
            .set("AnonymousMaxBodyBytes", 1000)
            .set("AnonymousBodyTimeout", 1)
            .set("MaxBodyBytes", 100_000);
    });
    let (status, _) = anonymous_post(&app, 100_000, b"method=ping");
    assert_eq!(status, 413, "a large announced body is refused");

    let (status, waited) = anonymous_post(&app, 500, b"method=ping&args=");
    assert_eq!(status, 408, "a body that stops coming is cut off");
    assert!(
        waited < Duration::from_secs(5),
        "cut off after {waited:?}, not after AnonymousBodyTimeout"
    );

    // The same size is fine for a caller with a certificate.
    let who = proxy("full", "g_full");
    let padding = "x".repeat(20_000);
    let body = form_encode(&[("method", "ping"), ("args", "[]"), ("padding", &padding)]);
    let request = Request::post("/Framework/TokenManager").body(FORM, body);
    let reply = Client::with_certificate(&who).call(app.https, &request);
    assert_eq!(reply.status(), Some(200), "{reply:?}");
}

#[test]
fn a_spent_descriptor_budget_sheds_the_oldest_idle_connection_for_a_newcomer() {
    let db = TestDb::new(Backend::Sqlite);
    // A reserve above any limit leaves clients the minimum budget, 64 connections.
    let app = process::spawn_app(&db, |c| {
        c.service()
            .set("DescriptorReserve", 4_000_000_000u64)
            .set("MaxUnidentifiedPerAddress", 0)
            .set("FirstByteTimeout", 60);
    });
    let (_, exposition) = http_get(app.metrics, "/metrics");
    assert_eq!(
        sample(&exposition, "tokenmanager_connection_budget"),
        Some(64.0)
    );
    let mut idle: Vec<TcpStream> = (0..70).map(|_| idle_socket(app.dips, 6)).collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(diset_echo(&app), json!({"OK": true, "Value": "through"}));
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(5)).is_some(),
        "the oldest idle socket made room"
    );
    assert_eq!(
        closed_within(&mut idle[69], Duration::from_millis(200)),
        None,
        "the newest idle socket is kept"
    );
    assert!(shed(&app, "dips", "descriptors") >= 7.0);
}

#[test]
fn out_of_descriptors_the_accept_loops_back_off_log_once_and_recover() {
    let db = TestDb::new(Backend::Sqlite);
    // No reserve: admission lets clients take every descriptor, so accept itself fails.
    let config = process::configure(&db, |c| {
        c.service()
            .set("DescriptorReserve", 0)
            .set("MaxUnidentifiedPerAddress", 0)
            .set("FirstByteTimeout", 60);
    });
    let mut server = process::ServeProcess::spawn_with(&config, |command| {
        process::with_open_file_limit(command, 160, 160)
    });
    let flood: Vec<TcpStream> = (0..250).map(|_| idle_socket(server.https, 7)).collect();
    server.wait_for_log("accepting connections fails");
    std::thread::sleep(Duration::from_secs(2));
    let reports = |server: &process::ServeProcess| {
        server
            .log()
            .lines()
            .filter(|line| line.contains("accepting connections fails"))
            .count()
    };
    assert_eq!(
        reports(&server),
        1,
        "one line, not one per attempt:\n{}",
        server.log()
    );

    drop(flood);
    let who = proxy("full", "g_full");
    let body = form_encode(&[("method", "ping"), ("args", "[]")]);
    let request = Request::post("/Framework/TokenManager").body(FORM, body);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = Client::with_certificate(&who)
            .timeout(Duration::from_secs(5))
            .call(server.https, &request);
        if reply.status() == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the flood: {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(reports(&server), 1);
}
