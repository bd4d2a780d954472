//! The JSON API over real TLS: the authorization matrix, whoami's dictionaries, bad input (on
//! the application in this process); reload and the refusal log (on the real binary).

use serde_json::{Value, json};
use tokenmanager::x509::pki::{CertifiedKey, ProxyKind, Validity};

use crate::client::{Client, Request};
use crate::pki::TestPki;
use crate::process::{spawn_app, spawn_process};
use crate::support::TestDb;
use crate::test_config::dn;

/// One kind of caller of the matrix.
struct Caller {
    name: &'static str,
    credential: Option<CertifiedKey>,
    source: Option<&'static str>,
    /// The user ID the caller acts on as "its own" (a host or stranger has none that counts).
    own_id: &'static str,
}

fn callers(pki: &TestPki) -> Vec<Caller> {
    let proxy =
        |user: &str, group: Option<&str>| Some(pki.proxy(&dn(user), ProxyKind::Rfc3820, group));
    let plain_user = pki.user(&dn("plain"));
    let forger = pki.user(&dn("forger"));
    let forged = plain_user
        .proxy(ProxyKind::Rfc3820)
        .signed_by(&forger.key)
        .issue()
        .unwrap();
    let expired = pki
        .ca
        .issue_user(&dn("plain"), Validity::expired())
        .unwrap();
    let untrusted = pki
        .untrusted
        .issue_user(
            &dn("plain"),
            Validity::from_now(std::time::Duration::from_secs(3600)),
        )
        .unwrap();
    let caller = |name, credential, own_id| Caller {
        name,
        credential,
        source: None,
        own_id,
    };
    vec![
        caller("FullDelegation", proxy("full", Some("g_full")), "id-full"),
        caller(
            "LimitedDelegation",
            proxy("limited", Some("g_limited")),
            "id-limited",
        ),
        caller(
            "PrivateLimitedDelegation",
            proxy("private", Some("g_private")),
            "id-private",
        ),
        caller(
            "ProxyManagement",
            proxy("manager", Some("g_manager")),
            "id-manager",
        ),
        caller("plain user", proxy("plain", None), "id-plain"),
        caller(
            "CSAdministrator",
            proxy("admin", Some("g_admin")),
            "id-admin",
        ),
        caller("registered host", Some(pki.host.clone()), "id-localhost"),
        caller(
            "unregistered DN",
            Some(pki.user(&dn("stranger"))),
            "id-stranger",
        ),
        caller(
            "suspended user",
            proxy("suspended", Some("g_user")),
            "id-suspended",
        ),
        Caller {
            name: "banned IP",
            credential: proxy("plain", None),
            source: Some("127.0.0.2"),
            own_id: "id-plain",
        },
        caller("expired certificate", Some(expired), "id-plain"),
        caller("untrusted CA", Some(untrusted), "id-plain"),
        caller("forged proxy", Some(forged), "id-plain"),
        caller(
            "limited proxy",
            Some(pki.proxy(&dn("plain"), ProxyKind::Rfc3820Limited, None)),
            "id-plain",
        ),
        caller("no certificate", None, "id-plain"),
    ]
}

/// A column of the matrix: its name, the method, and the arguments for a caller whose own user ID
/// is the parameter.
type Column = (&'static str, &'static str, fn(&str) -> Value);

fn columns() -> Vec<Column> {
    fn token(own: &str) -> Value {
        json!({"refresh_token": format!("rt-{own}"), "access_token": "at", "expires_in": 3600})
    }
    vec![
        ("ping", "ping", |_| json!({})),
        ("echo", "echo", |_| json!({"data": "hello"})),
        ("whoami", "whoami", |_| json!({})),
        (
            "updateToken own",
            "updateToken",
            |own| json!({"token": token(own), "userID": own, "provider": "test-idp"}),
        ),
        (
            "updateToken other",
            "updateToken",
            |_| json!({"token": token("x"), "userID": "id-victim", "provider": "test-idp"}),
        ),
        (
            "getTokensByUserID own",
            "getTokensByUserID",
            |own| json!({"userID": own}),
        ),
        (
            "getTokensByUserID other",
            "getTokensByUserID",
            |_| json!({"userID": "id-victim"}),
        ),
        ("getUserTokensInfo", "getUserTokensInfo", |_| json!({})),
        (
            "getUsersTokensInfo",
            "getUsersTokensInfo",
            |_| json!({"users": ["victim"]}),
        ),
        (
            "deleteToken other",
            "deleteToken",
            |_| json!({"userDN": "id-nobody-victim"}),
        ),
        (
            "deleteToken own",
            "deleteToken",
            |own| json!({"userDN": own}),
        ),
        (
            "refreshConfiguration",
            "refreshConfiguration",
            |_| json!({}),
        ),
    ]
}

/// The expected answer of every cell: an HTTP status, or 0 where the TLS handshake is refused.
/// Columns in the order of `columns()`.
#[rustfmt::skip]
const MATRIX: &[(&str, [u16; 12])] = &[
    //                            ping echo whoami upd.own upd.oth get.own get.oth user users del.oth del.own refresh
    ("FullDelegation",            [200, 200,   200,    200,    403,    200,    403, 200,  403,    403,    200,    403]),
    ("LimitedDelegation",         [200, 200,   200,    200,    403,    200,    403, 200,  403,    403,    200,    403]),
    ("PrivateLimitedDelegation",  [200, 200,   200,    200,    403,    200,    403, 200,  403,    403,    200,    403]),
    ("ProxyManagement",           [200, 200,   200,    200,    200,    200,    200, 200,  200,    200,    200,    403]),
    ("plain user",                [200, 200,   200,    200,    403,    200,    403, 200,  403,    403,    200,    403]),
    ("CSAdministrator",           [200, 200,   200,    200,    403,    200,    403, 200,  403,    403,    200,    200]),
    ("registered host",           [200, 200,   200,    403,    403,    403,    403, 404,  403,    403,    403,    403]),
    ("unregistered DN",           [200, 403,   200,    403,    403,    403,    403, 403,  403,    403,    403,    403]),
    ("suspended user",            [200, 403,   200,    403,    403,    403,    403, 403,  403,    403,    403,    403]),
    ("banned IP",                 [403, 403,   403,    403,    403,    403,    403, 403,  403,    403,    403,    403]),
    ("expired certificate",       [  0,   0,     0,      0,      0,      0,      0,   0,    0,      0,      0,      0]),
    ("untrusted CA",              [  0,   0,     0,      0,      0,      0,      0,   0,    0,      0,      0,      0]),
    ("forged proxy",              [  0,   0,     0,      0,      0,      0,      0,   0,    0,      0,      0,      0]),
    ("limited proxy",             [200, 403,   200,    403,    403,    403,    403, 403,  403,    403,    403,    403]),
    ("no certificate",            [401, 401,   401,    401,    401,    401,    401, 401,  401,    401,    401,    401]),
];

#[test]
fn authorization_matrix_over_real_tls() {
    let pki = TestPki::shared();
    let db = TestDb::new(tokenmanager::config::Backend::Sqlite);
    let app = spawn_app(&db, |_| {});
    let columns = columns();
    let callers = callers(pki);
    assert_eq!(callers.len(), MATRIX.len());
    let mut failures = Vec::new();
    let mut cells = 0;
    for (caller, (row_name, expected_row)) in callers.iter().zip(MATRIX) {
        assert_eq!(caller.name, *row_name, "rows in the same order");
        let client = Client::https(caller.credential.as_ref())
            .source(caller.source.map(|ip| ip.parse().unwrap()));
        for ((column, method, args), expected) in columns.iter().zip(expected_row) {
            cells += 1;
            let reply = client.post(
                app.https,
                &format!("/api/v1/{method}"),
                &args(caller.own_id).to_string(),
            );
            let got = reply.status().unwrap_or(0);
            if got != *expected {
                failures.push(format!(
                    "{row_name} × {column}: expected {expected}, got {got} {}",
                    reply.body()
                ));
            }
            if got == 200 {
                assert_eq!(reply.body()["ok"], json!(true), "{row_name} × {column}");
            } else if got != 0 {
                assert_eq!(reply.body()["ok"], json!(false), "{row_name} × {column}");
                assert!(
                    reply.body()["code"].is_string(),
                    "{row_name} × {column}: {}",
                    reply.body()
                );
            }
        }
    }
    assert_eq!(cells, 180);
    assert!(
        failures.is_empty(),
        "{} of {cells} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn whoami_describes_proxy_plain_certificate_and_host_callers() {
    let pki = TestPki::shared();
    let db = TestDb::new(tokenmanager::config::Backend::Sqlite);
    let app = spawn_app(&db, |_| {});
    let whoami = |credential: &CertifiedKey| {
        let reply = Client::with_certificate(credential).post(app.https, "/api/v1/whoami", "");
        assert_eq!(reply.status(), Some(200), "{:?}", reply);
        reply.body()["value"].clone()
    };

    let proxy = pki.proxy(&dn("full"), ProxyKind::Rfc3820, Some("g_full"));
    let value = whoami(&proxy);
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "subject",
            "issuer",
            "secondsLeft",
            "isProxy",
            "isLimitedProxy",
            "validDN",
            "validGroup",
            "DN",
            "identity",
            "group",
            "VO",
            "properties",
            "username"
        ]
    );
    assert_eq!(value["subject"], json!(proxy.subject()));
    assert_eq!(value["issuer"], json!(dn("full")));
    assert_eq!(
        (value["DN"].clone(), value["identity"].clone()),
        (json!(dn("full")), json!(dn("full")))
    );
    assert_eq!(
        (value["isProxy"].clone(), value["isLimitedProxy"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(
        (value["group"].clone(), value["VO"].clone()),
        (json!("g_full"), json!("dteam"))
    );
    assert_eq!(value["properties"], json!(["NormalUser", "FullDelegation"]));
    assert_eq!(value["username"], json!("full"));
    let left = value["secondsLeft"].as_i64().unwrap();
    assert!((3600..=86_400).contains(&left), "{left}");

    let plain = pki.user(&dn("plain"));
    let value = whoami(&plain);
    assert_eq!(value["subject"], json!(dn("plain")));
    assert_eq!(value["isProxy"], json!(false));
    assert!(
        value.get("identity").is_none(),
        "identity is for proxies only"
    );
    assert_eq!(
        (value["group"].clone(), value["username"].clone()),
        (json!("g_user"), json!("plain"))
    );

    let value = whoami(&pki.host);
    assert_eq!(value["DN"], json!(crate::pki::HOST_DN));
    assert_eq!(value["extraCredentials"], json!("hosts"));
    assert_eq!(
        (value["group"].clone(), value["username"].clone()),
        (json!("hosts"), json!("localhost"))
    );
    assert_eq!(value["properties"], json!(["TrustedHost"]));
    assert!(value.get("VO").is_none());

    let legacy = pki.proxy(&dn("plain"), ProxyKind::Legacy, None);
    let value = whoami(&legacy);
    assert_eq!(
        (value["isProxy"].clone(), value["DN"].clone()),
        (json!(true), json!(dn("plain")))
    );
    let limited = pki.proxy(&dn("plain"), ProxyKind::LegacyLimited, None);
    assert_eq!(whoami(&limited)["isLimitedProxy"], json!(true));
}

#[test]
fn bad_input_gets_the_documented_error_and_changes_nothing() {
    let pki = TestPki::shared();
    let db = TestDb::new(tokenmanager::config::Backend::Sqlite);
    let app = spawn_app(&db, |c| {
        c.service().set("MaxBodyBytes", 4096);
    });
    let manager = pki.proxy(&dn("manager"), ProxyKind::Rfc3820, Some("g_manager"));
    let client = Client::with_certificate(&manager);
    let post =
        |method: &str, body: &str| client.post(app.https, &format!("/api/v1/{method}"), body);
    let victim_info = || post("getTokensByUserID", r#"{"userID": "id-victim"}"#);

    let stored = post(
        "updateToken",
        &json!({"token": {"refresh_token": "rt-victim", "expires_in": 3600}, "userID": "id-victim", "provider": "test-idp"}).to_string(),
    );
    assert_eq!(stored.status(), Some(200), "{stored:?}");
    let before = victim_info();
    assert_eq!(before.body()["value"].as_array().unwrap().len(), 1);
    assert!(
        before.body()["value"][0].get("refresh_token").is_none(),
        "no token values by default"
    );

    let oversized = format!(r#"{{"data": "{}"}}"#, "x".repeat(5000));
    let cases: &[(&str, &str, u16, &str, &str)] = &[
        (
            "updateToken",
            r#"{"token": "#,
            400,
            "malformed_json",
            "not valid JSON",
        ),
        ("updateToken", "[1, 2]", 400, "bad_request", "JSON object"),
        (
            "updateToken",
            r#"{"token": {"refresh_token": "r"}, "userID": 5, "provider": "test-idp"}"#,
            400,
            "bad_argument",
            "argument 'userID' must be a string",
        ),
        (
            "updateToken",
            r#"{"token": {"refresh_token": "r"}, "userID": "id-victim"}"#,
            400,
            "bad_argument",
            "missing argument 'provider'",
        ),
        (
            "updateToken",
            r#"{"token": {}, "userID": "id-victim", "provider": "test-idp", "colour": 1}"#,
            400,
            "bad_argument",
            "takes no argument 'colour'",
        ),
        (
            "updateToken",
            r#"{"token": {"access_token": "a"}, "userID": "id-victim", "provider": "test-idp"}"#,
            400,
            "invalid_token",
            "Cannot store token without a refresh token.",
        ),
        (
            "updateToken",
            r#"{"token": {"refresh_token": "r", "rt_expires_at": 1}, "userID": "id-victim", "provider": "test-idp"}"#,
            400,
            "invalid_token",
            "Cannot store expired refresh token.",
        ),
        (
            "updateToken",
            r#"{"token": {"refresh_token": "r", "expires_in": "soon"}, "userID": "id-victim", "provider": "test-idp"}"#,
            400,
            "invalid_token",
            "token field 'expires_in' must be an integer",
        ),
        (
            "updateToken",
            r#"{"token": {"refresh_token": "r"}, "userID": "id-victim", "provider": "nowhere"}"#,
            400,
            "unknown_provider",
            "/Resources/IdProviders/nowhere does not exist",
        ),
        (
            "getUsersTokensInfo",
            r#"{"users": ["victim", "ghost"]}"#,
            404,
            "unknown_user",
            "No DN found for user ghost",
        ),
        (
            "echo",
            &oversized,
            413,
            "body_too_large",
            "larger than 4096 bytes",
        ),
        (
            "getToken2",
            "{}",
            404,
            "unknown_method",
            "Unknown method getToken2",
        ),
    ];
    for (method, body, status, code, message) in cases {
        let reply = post(method, body);
        assert_eq!(reply.status(), Some(*status), "{method} {body}: {reply:?}");
        assert_eq!(
            reply.body()["code"],
            json!(code),
            "{method} {body}: {reply:?}"
        );
        let text = reply.body()["message"].as_str().unwrap();
        assert!(text.contains(message), "{method}: {text}");
        assert!(!text.contains("rt-victim"), "no token in errors");
    }
    let get = client.call(app.https, &Request::get("/api/v1/ping"));
    assert_eq!(
        (get.status(), get.body()["code"].clone()),
        (Some(405), json!("method_not_allowed"))
    );
    let nowhere = client.post(app.https, "/elsewhere", "{}");
    assert_eq!(
        (nowhere.status(), nowhere.body()["code"].clone()),
        (Some(404), json!("not_found"))
    );
    assert_eq!(victim_info(), before, "refused calls changed nothing");

    let openapi = Client::anonymous().call(app.https, &Request::get("/api/v1/openapi.json"));
    assert_eq!(openapi.status(), Some(200));
    let paths = openapi.body()["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 11);
    assert_eq!(
        openapi.body()["paths"]["/api/v1/updateToken"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["required"],
        json!(["token", "userID", "provider"])
    );
    let refusals = &openapi.body()["paths"]["/api/v1/getToken"]["post"]["responses"];
    let bad_request = refusals["400"]["description"].as_str().unwrap();
    assert!(bad_request.contains("scope_not_granted"), "{bad_request}");
    assert!(
        refusals["409"]["description"]
            .as_str()
            .unwrap()
            .starts_with("needs_redelegation")
    );
}

#[test]
fn token_values_are_shown_only_with_the_option_and_only_to_proxy_management() {
    let pki = TestPki::shared();
    let db = TestDb::new(tokenmanager::config::Backend::Sqlite);
    let app = spawn_app(&db, |c| {
        c.service().set("ExposeTokenValues", "yes");
    });
    let manager = pki.proxy(&dn("manager"), ProxyKind::Rfc3820, Some("g_manager"));
    let plain = pki.proxy(&dn("plain"), ProxyKind::Rfc3820, None);
    let token = json!({"refresh_token": "rt-plain", "access_token": "at-plain", "expires_in": 60});
    let body = json!({"token": token, "userID": "id-plain", "provider": "test-idp"}).to_string();
    let as_plain = Client::with_certificate(&plain);
    let reply = as_plain.post(app.https, "/api/v1/updateToken", &body);
    let info = &reply.body()["value"][0];
    assert_eq!(info["user_id"], json!("id-plain"));
    assert!(
        info.get("refresh_token").is_none() && info.get("access_token").is_none(),
        "{info}"
    );

    let as_manager = Client::with_certificate(&manager);
    let reply = as_manager.post(
        app.https,
        "/api/v1/getUsersTokensInfo",
        r#"{"users": ["plain"]}"#,
    );
    let info = &reply.body()["value"][0];
    assert_eq!(
        (info["refresh_token"].clone(), info["access_token"].clone()),
        (json!("rt-plain"), json!("at-plain"))
    );
    assert_eq!(info["username"], json!("plain"));
    // DIRAC's key set and types: every column a string but expires_at.
    let keys: Vec<&str> = info
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "kid",
            "user_id",
            "provider",
            "expires_at",
            "access_token",
            "refresh_token",
            "rt_expires_at",
            "client_id",
            "token_type",
            "scope",
            "issued_at",
            "access_token_revoked_at",
            "refresh_token_revoked_at",
            "expires_in",
            "state",
            "username"
        ]
    );
    assert!(info["expires_at"].is_i64() && info["rt_expires_at"].is_string());
    assert_eq!(
        (info["client_id"].clone(), info["expires_in"].clone()),
        (json!("None"), json!("60"))
    );
}

/// Handshake refusals are otherwise silent: the server logs each at WARN with the certificate's
/// subject and OpenSSL's reason, and logs nothing for the errors it forgives a legacy proxy.
#[test]
fn refused_certificates_are_logged_with_subject_and_reason() {
    let pki = TestPki::shared();
    let db = TestDb::new(tokenmanager::config::Backend::Sqlite);
    let mut app = spawn_process(&db, |_| {});
    let late = pki
        .ca
        .issue_user(&dn("late user"), Validity::expired())
        .unwrap();
    let refused = Client::with_certificate(&late).post(app.https, "/api/v1/ping", "{}");
    assert_eq!(refused.status(), None, "{refused:?}");
    let warning = app.wait_for_log("certificate has expired");
    assert!(
        warning.contains("WARN") && warning.contains(&dn("late user")),
        "{warning}"
    );

    let legacy = pki.proxy(&dn("legacy user"), ProxyKind::Legacy, None);
    let accepted = Client::with_certificate(&legacy).post(app.https, "/api/v1/ping", "{}");
    assert_eq!(accepted.status(), Some(200), "{accepted:?}");
    assert!(
        !app.log().contains(&dn("legacy user")),
        "a forgiven legacy proxy is no warning:\n{}",
        app.log()
    );
}
