//! DIRAC's HTTPS and DISET protocols against the real binary over real TLS: framework status
//! codes, S_OK/S_ERROR replies with DIRAC's messages, both DISET encodings, keep-alive frames,
//! extraCredentials. DIRAC's own Python client is exercised by tests/dirac-client.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{Value, json};
use tokenmanager::x509::pki::{CertifiedKey, ProxyKind};

use crate::app::TestApp;
use crate::client::{Client, FORM, Reply, Request, Response, form_encode};
use crate::pki::TestPki;
use crate::process;
use crate::support::TestDb;
use crate::test_config::dn;
use tokenmanager::config::Backend;

pub fn proxy(user: &str, group: &str) -> CertifiedKey {
    TestPki::shared().proxy(&dn(user), ProxyKind::Rfc3820, Some(group))
}

fn spawn_app(db: &TestDb) -> TestApp {
    process::spawn_app(db, |c| {
        c.service()
            .section("Authorization")
            .set("getUsersTokensInfo", "ProxyManagement");
    })
}

/// `method=<m>&args=<urlencoded JSON>` as DIRAC 9's TornadoClient sends it.
fn form(method: &str, args: &str, extra: &str) -> String {
    let mut fields = vec![
        ("method", method),
        ("args", args),
        ("clientVO", "dteam"),
        ("clientSetup", "None"),
    ];
    if !extra.is_empty() {
        fields.push(("extraCredentials", extra));
    }
    form_encode(&fields)
}

fn https_call(app: &TestApp, who: Option<&CertifiedKey>, body: &str) -> Reply {
    let request = Request::post("/Framework/TokenManager").body(FORM, body);
    Client::https(who).call(app.https, &request)
}

#[test]
fn https_answers_methods_with_s_ok_and_s_error_at_status_200() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(&db);
    let full = proxy("full", "g_full");

    let echo = https_call(
        &app,
        Some(&full),
        &form("echo", r#"["hello from DIRAC client"]"#, ""),
    );
    assert_eq!(echo.status(), Some(200));
    assert_eq!(
        echo.body(),
        &json!({"OK": true, "Value": "hello from DIRAC client"})
    );

    // Tornado routes the DIRAC 9 section name too.
    let body = form(
        "echo",
        r#"[{"a": [1, 2.5, "x"], "b": null, "c": true}]"#,
        "",
    );
    let tornado = Client::with_certificate(&full).call(
        app.https,
        &Request::post("/Framework/TornadoTokenManager").body(FORM, body),
    );
    assert_eq!(
        tornado.body(),
        &json!({"OK": true, "Value": {"a": [1, 2.5, "x"], "b": null, "c": true}})
    );

    let ping = https_call(&app, Some(&full), &form("ping", "[]", ""));
    let value = &ping.body()["Value"];
    assert_eq!(value["time"]["__dCls"], "dt", "{value}");
    assert_eq!(value["service start time"]["__dCls"], "dt");
    assert_eq!(value["name"], "Framework/TokenManager");
    for key in [
        "version",
        "host uptime",
        "service uptime",
        "load",
        "cpu times",
    ] {
        assert!(value.get(key).is_some(), "ping lacks {key}: {value}");
    }

    let whoami = https_call(&app, Some(&full), &form("whoami", "[]", ""));
    let me = &whoami.body()["Value"];
    assert_eq!(me["DN"], dn("full"));
    assert_eq!(me["group"], "g_full");
    assert_eq!(me["username"], "full");
    assert_eq!(me["isProxy"], true);
    assert_eq!(me["VO"], "dteam");

    // Argument errors are S_ERRORs with DISET's words, not HTTP errors.
    let few = https_call(&app, Some(&full), &form("getTokensByUserID", "[]", ""));
    assert_eq!(
        few.body(),
        &json!({"OK": false, "Errno": 0, "Message": "Function getTokensByUserID expects at least 1 arguments"})
    );
    let mismatch = https_call(&app, Some(&full), &form("getTokensByUserID", "[42]", ""));
    assert_eq!(
        mismatch.body()["Message"],
        "Type mismatch in parameter 0 (starting with param 0) Received <class 'int'>, expected <class 'str'>"
    );
    let not_json = https_call(&app, Some(&full), &form("echo", "[1,", ""));
    assert_eq!(not_json.status(), Some(200));
    assert_eq!(not_json.body()["OK"], false);
    assert!(
        not_json.body()["Message"]
            .as_str()
            .unwrap()
            .starts_with("Error in parameter check"),
        "{not_json:?}"
    );
    let object = https_call(&app, Some(&full), &form("echo", r#"{"a": 1}"#, ""));
    assert_eq!(object.body()["OK"], false, "{object:?}");

    // A method's own refusal is an S_ERROR too.
    let none = https_call(
        &app,
        Some(&full),
        &form("getToken", r#"["nobody", "g_user"]"#, ""),
    );
    assert_eq!(none.status(), Some(200));
    assert_eq!(none.body()["OK"], false);
    assert_eq!(none.body()["Errno"], 0);
}

#[test]
fn https_framework_failures_use_diracs_status_codes() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(&db);
    let full = proxy("full", "g_full");
    let plain = proxy("plain", "g_user");
    let as_full = Client::with_certificate(&full);

    let cases: [(&str, Reply, u16); 7] = [
        (
            "no method",
            https_call(&app, Some(&full), "args=%5B%5D&clientVO=dteam"),
            400,
        ),
        (
            "unknown method",
            https_call(&app, Some(&full), &form("noSuchMethod", "[]", "")),
            501,
        ),
        (
            "no certificate, even for ping",
            https_call(&app, None, &form("ping", "[]", "")),
            401,
        ),
        (
            "a rule refuses",
            https_call(
                &app,
                Some(&plain),
                &form("getUsersTokensInfo", r#"[["plain"]]"#, ""),
            ),
            401,
        ),
        (
            "GET",
            as_full.call(app.https, &Request::get("/Framework/TokenManager")),
            405,
        ),
        (
            "unknown path",
            as_full.call(
                app.https,
                &Request::post("/Framework/Other").body(FORM, form("ping", "[]", "")),
            ),
            404,
        ),
        (
            "unknown content type",
            as_full.call(
                app.https,
                &Request::post("/Framework/TokenManager").body("text/plain", "method=ping"),
            ),
            400,
        ),
    ];
    for (case, reply, status) in cases {
        assert_eq!(reply.status(), Some(status), "{case}: {reply:?}");
    }

    // `method` may come in the query string (Tornado's get_argument); args only in the body.
    let query = as_full.call(
        app.https,
        &Request::post("/Framework/TokenManager?method=echo").body(FORM, "args=%5B%22q%22%5D"),
    );
    assert_eq!(query.body(), &json!({"OK": true, "Value": "q"}));

    let boundary = "XyZ";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\necho\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"args\"\r\n\r\n[\"multi\"]\r\n--{boundary}--\r\n"
    );
    let reply = as_full.call(
        app.https,
        &Request::post("/Framework/TokenManager").body(
            &format!("multipart/form-data; boundary={boundary}"),
            multipart,
        ),
    );
    assert_eq!(reply.body(), &json!({"OK": true, "Value": "multi"}));
}

#[test]
fn https_extra_credentials_identify_hosts_and_forwarded_users() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(&db);
    let host = TestPki::shared().host.clone();

    let as_host = https_call(&app, Some(&host), &form("whoami", "[]", r#""hosts""#));
    let me = &as_host.body()["Value"];
    assert_eq!(me["group"], "hosts", "{as_host:?}");
    assert_eq!(me["username"], "localhost");
    assert_eq!(me["extraCredentials"], "hosts");

    // The host is a TrustedHost: it may act for a user of a group the user belongs to.
    let forwarded = https_call(
        &app,
        Some(&host),
        &form(
            "whoami",
            "[]",
            &format!(r#"["{}", "g_manager"]"#, dn("manager")),
        ),
    );
    let me = &forwarded.body()["Value"];
    assert_eq!(me["DN"], dn("manager"), "{forwarded:?}");
    assert_eq!(me["group"], "g_manager");
    assert_eq!(me["username"], "manager");

    // A user may not forward: refused as DIRAC refuses it.
    let full = proxy("full", "g_full");
    let refused = https_call(
        &app,
        Some(&full),
        &form(
            "whoami",
            "[]",
            &format!(r#"["{}", "g_manager"]"#, dn("manager")),
        ),
    );
    assert_eq!(refused.status(), Some(401), "{refused:?}");
}

/// A DISET client: one TLS connection, frames of `<len>:<payload>`.
pub struct Diset {
    stream: openssl::ssl::SslStream<TcpStream>,
}

impl Diset {
    pub fn connect(port: u16, credential: Option<&CertifiedKey>) -> Result<Self, String> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let stream = crate::client::connector(credential)
            .connect("127.0.0.1", tcp)
            .map_err(|e| e.to_string())?;
        Ok(Self { stream })
    }

    pub fn send(&mut self, payload: &[u8]) {
        self.try_send(payload).unwrap();
    }

    pub fn try_send(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = format!("{}:", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame)
    }

    pub fn try_send_keep_alive(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = format!("dka{}:", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame, `dka` prefix included; None when the server closed the connection.
    pub fn receive(&mut self) -> Option<Vec<u8>> {
        let mut header = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) | Err(_) => return None,
                Ok(_) if byte[0] == b':' => break,
                Ok(_) => header.push(byte[0]),
            }
        }
        let text = String::from_utf8(header).unwrap();
        let (prefix, length) = match text.strip_prefix("dka") {
            Some(length) => ("dka", length),
            None => ("", text.as_str()),
        };
        let mut payload = vec![0u8; length.parse().unwrap()];
        self.stream.read_exact(&mut payload).unwrap();
        let mut frame = prefix.as_bytes().to_vec();
        frame.extend_from_slice(&payload);
        Some(frame)
    }

    pub fn receive_json(&mut self) -> Value {
        let frame = self.receive().expect("a reply");
        serde_json::from_slice(&frame)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&frame)))
    }
}

pub fn proposal(method: &str, extra: &str) -> String {
    format!(
        r#"{{"OK": true, "Value": [["Framework/TokenManager", "Test", "dteam"], ["RPC", "{method}"], {extra}, "9.1.22"]}}"#
    )
}

fn diset_call(app: &TestApp, who: &CertifiedKey, method: &str, args: &str) -> Value {
    let mut diset = Diset::connect(app.dips, Some(who)).unwrap();
    diset.send(proposal(method, r#""""#).as_bytes());
    assert_eq!(diset.receive_json(), json!({"OK": true, "Value": null}));
    diset.send(format!(r#"{{"OK": true, "Value": {args}}}"#).as_bytes());
    let reply = diset.receive_json();
    assert_eq!(diset.receive(), None, "the server closes after the result");
    reply
}

#[test]
fn diset_serves_the_conversation_in_json_and_dencode() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(&db);
    let full = proxy("full", "g_full");

    assert_eq!(
        diset_call(&app, &full, "echo", r#"["hello"]"#),
        json!({"OK": true, "Value": "hello"})
    );
    let whoami = diset_call(&app, &full, "whoami", "[]");
    assert_eq!(whoami["Value"]["DN"], dn("full"));
    assert_eq!(whoami["Value"]["group"], "g_full");
    let ping = diset_call(&app, &full, "ping", "[]");
    assert_eq!(ping["Value"]["time"]["__dCls"], "dt");
    assert_eq!(
        diset_call(&app, &full, "getTokensByUserID", "[]"),
        json!({"OK": false, "Errno": 0, "Message": "Function getTokensByUserID expects at least 1 arguments"})
    );

    // DIRAC 8 clients speak DEncode: the reply comes back in DEncode, byte for byte.
    let mut diset = Diset::connect(app.dips, Some(&full)).unwrap();
    diset.send(b"ds2:OKb1s5:Valuells22:Framework/TokenManagers4:Tests5:dteamels3:RPCs4:echoes0:s6:8.0.55ee");
    assert_eq!(diset.receive().unwrap(), b"ds2:OKb1s5:Valuene");
    diset.send(b"ds2:OKb1s5:Valuels2:hiee");
    assert_eq!(diset.receive().unwrap(), b"ds2:OKb1s5:Values2:hie");

    // A keep-alive ping while the client waits is answered, then the call goes on.
    let mut diset = Diset::connect(app.dips, Some(&full)).unwrap();
    diset.send(proposal("echo", r#""""#).as_bytes());
    assert_eq!(diset.receive_json(), json!({"OK": true, "Value": null}));
    let ping = br#"{"OK": true, "Value": {"id": "abc0", "kaping": true}}"#;
    diset.send_raw(format!("dka{}:", ping.len()).as_bytes());
    diset.send_raw(ping);
    let pong = diset.receive().unwrap();
    assert_eq!(
        pong,
        br#"dka{"OK": true, "Value": {"id": "abc0", "kaping": false}}"#.to_vec()
    );
    diset.send(br#"{"OK": true, "Value": ["after ping"]}"#);
    assert_eq!(
        diset.receive_json(),
        json!({"OK": true, "Value": "after ping"})
    );
}

#[test]
fn diset_refuses_at_the_proposal_with_diracs_errors() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(&db);
    let plain = proxy("plain", "g_user");

    let refuse = |proposal: &str| -> Value {
        let mut diset = Diset::connect(app.dips, Some(&plain)).unwrap();
        diset.send(proposal.as_bytes());
        let reply = diset.receive_json();
        assert_eq!(diset.receive(), None, "closed after a refusal");
        reply
    };
    assert_eq!(
        refuse(&proposal("getUsersTokensInfo", r#""""#)),
        json!({"OK": false, "Errno": 1111, "Message": "Unauthorized query ( 1111 : Unauthorized query)"})
    );
    assert_eq!(
        refuse(
            r#"{"OK": true, "Value": [["Framework/Other", "Test", "dteam"], ["RPC", "ping"], "", "9.1.22"]}"#
        )["Message"],
        "Framework/Other is not up in this server"
    );
    assert_eq!(
        refuse(
            r#"{"OK": true, "Value": [["Framework/TokenManager", "Test", "dteam"], ["Bogus", "ping"], "", "9.1.22"]}"#
        )["Message"],
        "Bogus is not a known action type"
    );
    let transfer = refuse(
        r#"{"OK": true, "Value": [["Framework/TokenManager", "Test", "dteam"], ["FileTransfer", "FromClient"], "", "9.1.22"]}"#,
    );
    assert_eq!(transfer["OK"], false);
    assert_eq!(
        refuse("{not a message")["Message"],
        "Invalid action proposal"
    );
    assert_eq!(
        refuse(r#"{"OK": true, "Value": 3}"#)["Message"],
        "Invalid action proposal"
    );

    // An unknown method passes the Default rule, then DISET names it after the arguments.
    let mut diset = Diset::connect(app.dips, Some(&plain)).unwrap();
    diset.send(proposal("noSuchMethod", r#""""#).as_bytes());
    assert_eq!(diset.receive_json(), json!({"OK": true, "Value": null}));
    diset.send(br#"{"OK": true, "Value": []}"#);
    assert_eq!(
        diset.receive_json(),
        json!({"OK": false, "Errno": 0, "Message": "Unknown method noSuchMethod"})
    );

    // A proposal beyond DIRAC's 1024-byte limit.
    let mut diset = Diset::connect(app.dips, Some(&plain)).unwrap();
    diset.send_raw(b"5000:");
    assert_eq!(diset.receive_json()["Message"], "Invalid action proposal");

    // No client certificate: no handshake (TLS 1.3 tells the client at its first read).
    // The write itself may already meet the server's reset.
    if let Ok(mut anonymous) = Diset::connect(app.dips, None)
        && anonymous
            .try_send(proposal("ping", r#""""#).as_bytes())
            .is_ok()
    {
        assert_eq!(anonymous.receive(), None);
    }
}

#[test]
fn diset_hosts_use_extra_credentials() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(&db);
    let host = TestPki::shared().host.clone();
    let mut diset = Diset::connect(app.dips, Some(&host)).unwrap();
    diset.send(proposal("whoami", r#""hosts""#).as_bytes());
    assert_eq!(diset.receive_json(), json!({"OK": true, "Value": null}));
    diset.send(br#"{"OK": true, "Value": []}"#);
    let me = diset.receive_json();
    assert_eq!(me["Value"]["group"], "hosts", "{me}");
    assert_eq!(me["Value"]["username"], "localhost");
}

#[test]
fn diset_limits_connections_and_drops_silent_peers() {
    let db = TestDb::new(Backend::Sqlite);
    let app = process::spawn_app(&db, |c| {
        c.service()
            .set("MaxThreads", 1)
            .set("HandshakeTimeout", 1)
            .set("PacketTimeout", 2);
    });
    let full = proxy("full", "g_full");

    // A client that never handshakes is dropped after HandshakeTimeout.
    let mut silent = TcpStream::connect(("127.0.0.1", app.dips)).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        silent.read(&mut byte).unwrap(),
        0,
        "closed by the server, not by the read timeout"
    );

    // With MaxThreads = 1, a second call waits until the first connection is let go: the
    // first is silent after its handshake, so only PacketTimeout (2 s) frees the place.
    let mut first = Diset::connect(app.dips, Some(&full)).unwrap();
    let started = std::time::Instant::now();
    let port = app.dips;
    let second = std::thread::spawn(move || {
        let full = proxy("full", "g_full");
        let mut diset = Diset::connect(port, Some(&full)).unwrap();
        diset.send(proposal("echo", r#""""#).as_bytes());
        (diset.receive_json(), started.elapsed())
    });
    assert_eq!(
        first.receive(),
        None,
        "the silent first connection is dropped"
    );
    let (reply, waited) = second.join().unwrap();
    assert_eq!(reply, json!({"OK": true, "Value": null}));
    assert!(
        waited >= std::time::Duration::from_millis(1500),
        "the second call was served after {waited:?}, before the first left its place"
    );
}

#[test]
fn https_gzips_large_replies_for_clients_that_accept_it() {
    let db = TestDb::new(Backend::Sqlite);
    let app = spawn_app(&db);
    let full = proxy("full", "g_full");
    let echo = |accept: Option<&str>, text: &str| -> Response {
        let mut request = Request::post("/Framework/TokenManager")
            .body(FORM, form("echo", &format!(r#"["{text}"]"#), ""));
        if let Some(accept) = accept {
            request = request.header("Accept-Encoding", accept);
        }
        Client::with_certificate(&full)
            .send(app.https, &request)
            .unwrap()
    };
    let long = "x".repeat(2000);

    let gzipped = echo(Some("gzip, deflate"), &long);
    assert_eq!(gzipped.header("Content-Encoding"), Some("gzip"));
    let mut json = String::new();
    flate2::read::GzDecoder::new(gzipped.body.as_slice())
        .read_to_string(&mut json)
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        json!({"OK": true, "Value": long})
    );

    // Small replies, and clients that do not accept gzip, get plain JSON.
    let short = echo(Some("gzip"), "short");
    assert_eq!(short.header("Content-Encoding"), None);
    assert_eq!(short.body, br#"{"OK": true, "Value": "short"}"#);
    for accept in [None, Some("gzip;q=0, identity")] {
        assert_eq!(
            echo(accept, &long).header("Content-Encoding"),
            None,
            "{accept:?}"
        );
    }
}
