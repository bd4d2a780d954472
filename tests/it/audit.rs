//! The audit trail (docs/OPERATIONS.md#the-audit-trail): handouts aggregated per window and
//! credential changes, read back with getTokenAudit and `tokenmanager audit`, on every backend;
//! nothing lost across SIGTERM; a purge that never holds up the store of a rotated refresh token.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenmanager::config::Backend;

use crate::client::{Client, Request, form_encode};
use crate::dirac::{Diset, proposal, proxy};
use crate::get_token::{CE, Setup, setup_with};
use crate::process;
use crate::support::TestDb;

/// The tests' window: records are written within about a second of their calls.
fn short_window(config: &mut crate::test_config::TestConfig) {
    config.service().set("AuditWindow", 1);
}

/// getTokenAudit as the ProxyManagement caller, until `done` holds for the records (the
/// window's writer runs every second), within 10 s.
fn audit_until(setup: &Setup, args: Value, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = setup.call(&setup.manager, "getTokenAudit", args.clone());
        assert_eq!(reply.status(), Some(200), "{reply:?}");
        let records = reply.body()["value"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "audit records never came: {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The occurrences of the handouts matching `field == value` pairs.
fn handouts(records: &[Value], origin: &str, outcome: &str) -> i64 {
    records
        .iter()
        .filter(|r| r["kind"] == "handout" && r["origin"] == origin && r["outcome"] == outcome)
        .map(|r| r["occurrences"].as_i64().unwrap())
        .sum()
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

mod on_every_backend {
    use super::*;

    #[test]
    fn sqlite() {
        handouts_and_changes_are_recorded(Backend::Sqlite);
    }

    #[test]
    fn postgres() {
        handouts_and_changes_are_recorded(Backend::Postgres);
    }

    #[test]
    fn mariadb() {
        handouts_and_changes_are_recorded(Backend::Mysql);
    }
}

fn handouts_and_changes_are_recorded(backend: Backend) {
    let setup = setup_with(TestDb::new(backend), 0, &[], short_window);
    setup.delegate("plain");
    // A refresh (the stored access token has no audience): minted, the refresh token rotated.
    let minted = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(minted.status(), Some(200), "{minted:?}");
    let access_token = minted.body()["value"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..4 {
        assert_eq!(
            setup.get_token(Some("plain"), Some(CE), 0).status(),
            Some(200)
        );
    }
    // A user without a stored credential: recorded with its error code.
    let refused = setup.get_token(Some("victim"), Some(CE), 0);
    assert_eq!(refused.body()["code"], "no_token", "{refused:?}");

    let records = audit_until(&setup, json!({}), |records| {
        handouts(records, "cache", "ok") == 4 && !of_kind(records, "rotate").is_empty()
    });
    assert_eq!(handouts(&records, "minted", "ok"), 1, "{records:#?}");
    let minted_record = records
        .iter()
        .find(|r| r["kind"] == "handout" && r["origin"] == "minted")
        .unwrap();
    assert_eq!(minted_record["caller"], crate::test_config::dn("full"));
    assert_eq!(minted_record["caller_group"], "g_full");
    assert_eq!(minted_record["on_behalf_of"], "plain");
    assert_eq!(minted_record["user_id"], "id-plain");
    assert_eq!(minted_record["provider"], "test-idp");
    assert_eq!(minted_record["client_id"], "tm-basic");
    assert_eq!(minted_record["audience"], CE);
    assert!(
        minted_record["scopes"]
            .as_str()
            .unwrap()
            .contains("compute.read")
    );
    assert_eq!(minted_record["protocol"], "json");
    assert_eq!(minted_record["client_addresses"], json!(["127.0.0.1"]));
    let refusal = records
        .iter()
        .find(|r| r["kind"] == "handout" && r["on_behalf_of"] == "victim")
        .expect("the refused call is recorded");
    assert_eq!(refusal["outcome"], "no_token");
    assert_eq!(refusal["origin"], Value::Null);

    let update = of_kind(&records, "update");
    assert_eq!(update.len(), 1, "{records:#?}");
    assert_eq!(update[0]["outcome"], "ok");
    assert_eq!(update[0]["caller"], crate::test_config::dn("manager"));
    assert_eq!(update[0]["user_id"], "id-plain");
    let rotate = of_kind(&records, "rotate");
    assert_eq!(rotate.len(), 1, "{records:#?}");
    assert_eq!(rotate[0]["protocol"], "service");
    assert_eq!(rotate[0]["detail"], "generation 2");

    // Nothing secret: the handed-out access token appears nowhere, nor does any JWT.
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains(&access_token) && !text.contains("eyJ"),
        "{text}"
    );

    // Filters: a user's records (its handouts and its credential's changes), a provider.
    let plain = audit_until(&setup, json!({"user": "plain"}), |r| !r.is_empty());
    assert!(
        plain
            .iter()
            .all(|r| r["on_behalf_of"] == "plain" || r["user_id"] == "id-plain"),
        "{plain:#?}"
    );
    let none = setup.call(
        &setup.manager,
        "getTokenAudit",
        json!({"provider": "other-idp"}),
    );
    assert_eq!(none.body()["value"], json!([]), "{none:?}");

    // A user sees their own records, and only theirs; another user's are refused.
    let own = setup.call(&proxy("plain", "g_user"), "getTokenAudit", json!({}));
    let own = own.body()["value"].as_array().cloned().unwrap();
    assert!(!own.is_empty());
    assert!(
        own.iter()
            .all(|r| r["on_behalf_of"] == "plain" || r["user_id"] == "id-plain"),
        "{own:#?}"
    );
    let other = setup.call(
        &proxy("plain", "g_user"),
        "getTokenAudit",
        json!({"user": "victim"}),
    );
    assert_eq!(other.body()["code"], "forbidden", "{other:?}");

    // DIRAC's HTTPS protocol, positional arguments: the same records.
    let body = form_encode(&[
        ("method", "getTokenAudit"),
        ("args", r#"["plain", "test-idp", 0, 2]"#),
    ]);
    let request =
        Request::post("/Framework/TokenManager").body("application/x-www-form-urlencoded", body);
    let reply = Client::with_certificate(&setup.manager).call(setup.https_ports[0], &request);
    assert_eq!(reply.body()["OK"], true, "{reply:?}");
    assert_eq!(reply.body()["Value"].as_array().unwrap().len(), 2);
    // And DISET.
    let mut diset = Diset::connect(setup.dips_port(), Some(&setup.manager)).unwrap();
    diset.send(proposal("getTokenAudit", r#""""#).as_bytes());
    assert_eq!(diset.receive_json(), json!({"OK": true, "Value": null}));
    diset.send(br#"{"OK": true, "Value": ["plain", "test-idp", 0, 2]}"#);
    let reply = diset.receive_json();
    assert_eq!(reply["OK"], true, "{reply}");
    assert_eq!(reply["Value"].as_array().unwrap().len(), 2, "{reply}");
}

/// `Audit = no`: getToken works and nothing is recorded.
#[test]
fn audit_off_records_nothing() {
    let setup = setup_with(TestDb::new(Backend::Sqlite), 0, &[], |c| {
        short_window(c);
        c.service().set("Audit", "no");
    });
    setup.delegate("plain");
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 0).status(),
        Some(200)
    );
    std::thread::sleep(Duration::from_millis(1500));
    let reply = setup.call(&setup.manager, "getTokenAudit", json!({}));
    assert_eq!(reply.body()["value"], json!([]), "{reply:?}");
}

/// SIGTERM with a window still open (60 s): every handout is written before the process
/// exits, and `tokenmanager audit` reads them from the database with the service down.
#[test]
fn sigterm_writes_every_pending_record() {
    let mut setup = setup_with(TestDb::new(Backend::Postgres), 1, &[], |c| {
        c.service().set("AuditWindow", 60);
    });
    setup.delegate("plain");
    let calls = 25;
    for _ in 0..calls {
        assert_eq!(
            setup.get_token(Some("plain"), Some(CE), 0).status(),
            Some(200)
        );
    }
    let server = &mut setup.processes[0];
    server.signal("TERM");
    assert!(
        server.exits_within(Duration::from_secs(20)),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("audit trail written at stop"),
        "{}",
        server.log()
    );

    let config = setup.config_path().to_str().unwrap().to_owned();
    let output = process::run(
        &["--config", &config, "audit", "--user", "plain", "--json"],
        &[],
    );
    assert!(output.status.success(), "{}", process::stderr(&output));
    let records: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let handed_out: i64 = of_kind(&records, "handout")
        .iter()
        .map(|r| r["occurrences"].as_i64().unwrap())
        .sum();
    assert_eq!(handed_out, calls, "{records:#?}");
    assert_eq!(of_kind(&records, "update").len(), 1, "{records:#?}");

    // The table, and a filter that matches nothing.
    let output = process::run(&["--config", &config, "audit", "--since", "1h"], &[]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("handout") && table.contains("plain"),
        "{table}"
    );
    let output = process::run(
        &["--config", &config, "audit", "--provider", "nope", "--json"],
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
    let output = process::run(&["--config", &config, "audit", "--since", "1w"], &[]);
    assert!(!output.status.success());
    assert!(
        process::stderr(&output).contains("not an age"),
        "{}",
        process::stderr(&output)
    );
}

/// A purge of 400,000 old records on SQLite (one writer at a time) holds the file's write lock
/// one 1,000-row statement at a time: a refresh in the middle of it stores its rotated refresh
/// token and answers while the purge goes on.
#[actix::test]
async fn a_refresh_stores_while_a_purge_runs() {
    use std::sync::Arc;

    use tokenmanager::actors::audit::AuditTrail;
    use tokenmanager::crypto::KeyringFile;
    use tokenmanager::metrics::Metrics;

    let setup = Arc::new(setup_with(
        TestDb::new(Backend::Sqlite),
        0,
        &[],
        short_window,
    ));
    setup.delegate("plain");
    let old = 400_000;
    setup.db().execute_raw(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {old}) \
         INSERT INTO audit_events (first_at, last_at, occurrences, kind, outcome, protocol, replica) \
         SELECT 1000, 1000, 1, 'handout', 'ok', 'json', 'old' FROM n"
    ));
    let keyring = KeyringFile::new(setup.db().dir.path().join("keyring"));
    let database = crate::support::TestStore::open_database(setup.db(), &keyring);
    let trail = AuditTrail::new(
        database,
        "purger".into(),
        true,
        Arc::new(Metrics::unexported()),
    );
    let purge = actix::spawn(async move { trail.purge(Duration::from_secs(86_400)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !purge.is_finished(),
        "the purge ended too soon to test anything"
    );

    let caller = setup.clone();
    let started = Instant::now();
    let refreshed =
        tokio::task::spawn_blocking(move || caller.get_token(Some("plain"), Some(CE), 0))
            .await
            .unwrap();
    let took = started.elapsed();
    assert_eq!(refreshed.status(), Some(200), "{refreshed:?}");
    // A refresh, not a cached token; its rotated refresh token stored (the grant lives).
    let stats = setup.idp.stats();
    assert!(stats.refreshes("id-plain") >= 1, "{stats:?}");
    assert_eq!(stats.refresh_errors("id-plain"), 0, "{stats:?}");
    assert!(setup.idp.grant_alive("id-plain"));
    assert!(
        !purge.is_finished(),
        "the refresh ({took:?}) waited for the whole purge"
    );
    let purged = purge.await.unwrap().unwrap();
    assert_eq!(purged, old);
    // The recent records stay: the updateToken, the refresh's rotation and handout.
    let caller = setup.clone();
    let records = tokio::task::spawn_blocking(move || {
        audit_until(&caller, json!({}), |r| !of_kind(r, "rotate").is_empty())
    })
    .await
    .unwrap();
    assert_eq!(of_kind(&records, "update").len(), 1);
}

/// `LogFormat = json`: every line of the real binary's log is one JSON object, each audit record
/// one event with its fields, and no token value in any of them.
#[test]
fn json_log_has_one_event_per_audit_record() {
    let mut setup = setup_with(TestDb::new(Backend::Sqlite), 1, &[], |c| {
        short_window(c);
        c.service().set("LogFormat", "json");
    });
    setup.delegate("plain");
    let reply = setup.get_token(Some("plain"), Some(CE), 0);
    let access_token = reply.body()["value"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 0).status(),
        Some(200)
    );
    let server = &mut setup.processes[0];
    server.signal("TERM");
    assert!(server.exits_within(Duration::from_secs(20)));
    let log = server.log();
    let events: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(!log.contains(&access_token), "a token in the log");
    let audit: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"] == "tokenmanager::audit")
        .collect();
    let minted = audit
        .iter()
        .find(|e| e["kind"] == "handout" && e["origin"] == "minted")
        .unwrap_or_else(|| panic!("no minted handout event in {audit:#?}"));
    assert_eq!(minted["on_behalf_of"], "plain");
    assert_eq!(minted["outcome"], "ok");
    assert_eq!(minted["audience"], CE);
    assert!(audit.iter().any(|e| e["kind"] == "update"), "{audit:#?}");
    assert!(audit.iter().any(|e| e["kind"] == "rotate"), "{audit:#?}");
}
