//! `export-dirac-tokendb`: the binary writes our credentials into a DIRAC `Token` table on
//! MariaDB, which DIRAC 9.1.22's own TokenDB code (from PyPI, tests/dirac-client/tokendb_read.py)
//! then reads as DIRAC's TokenManager would; a round trip DIRAC → us → DIRAC through a real
//! rotation at the test IdP keeps the grant alive; DIRAC's newer logins are kept; and a
//! credential written while the export runs rolls it back.

use std::path::{Path, PathBuf};
use std::process::Command;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::{Value, json};
use tokenmanager::actors::db::DbOperation;
use tokenmanager::config::Backend;
use tokenmanager::domain::unix_now;

use crate::dirac_client::venv;
use crate::get_token::{SCOPE, setup_with};
use crate::import::{dirac_tokendb, insert_dirac_row};
use crate::on_every_backend;
use crate::process::{run, stderr};
use crate::support::{TestDb, TestStore, get_credential, new_token, store_token};
use crate::test_config::{IDP, TestConfig};

const CONFIRM: &str = "--i-understand-tokens-are-stored-in-clear";

on_every_backend!(diracs_own_tokendb_reads_what_the_export_wrote);

/// Runs the export; returns (success, stdout, stderr), after checking that no token value (every
/// token these tests store starts with `secret-`; `secrets` are the test IdP's) is in either.
fn export(
    config: &Path,
    target: &TestDb,
    extra: &[&str],
    secrets: &[&str],
) -> (bool, String, String) {
    let mut args = vec![
        "export-dirac-tokendb",
        "--config",
        config.to_str().unwrap(),
        &target.url,
    ];
    args.extend_from_slice(extra);
    let output = run(&args, &[]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr(&output),
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains("secret-"), "a token was printed: {text}");
        for secret in secrets {
            assert!(!text.contains(secret), "a token was printed: {text}");
        }
    }
    (output.status.success(), stdout, stderr)
}

/// The export's output once it succeeded.
fn exported(config: &Path, target: &TestDb, extra: &[&str], secrets: &[&str]) -> String {
    let (ok, stdout, stderr) = export(config, target, extra, secrets);
    assert!(ok, "{stdout}{stderr}");
    stdout
}

fn summary(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|line| line.starts_with("exported="))
        .unwrap_or_else(|| panic!("no summary line: {stdout}"))
}

#[derive(QueryableByName, Debug, Clone, PartialEq, Eq)]
struct DiracRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Text)]
    provider: String,
    #[diesel(sql_type = Text)]
    refresh_token: String,
    #[diesel(sql_type = Text)]
    access_token: String,
    #[diesel(sql_type = BigInt)]
    expires_at: i64,
    #[diesel(sql_type = BigInt)]
    rt_expires_at: i64,
    #[diesel(sql_type = BigInt)]
    issued_at: i64,
}

/// DIRAC's rows in id order, or None if the database has no `Token` table.
fn dirac_rows(db: &TestDb) -> Option<Vec<DiracRow>> {
    let mut conn = MysqlConnection::establish(&db.url).unwrap();
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let tables: Count = diesel::sql_query(
        "SELECT COUNT(*) AS count FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'Token'",
    )
    .get_result(&mut conn)
    .unwrap();
    (tables.count > 0).then(|| {
        diesel::sql_query(
            "SELECT CAST(id AS SIGNED) AS id, user_id, provider, refresh_token, access_token, \
             CAST(expires_at AS SIGNED) AS expires_at, \
             CAST(rt_expires_at AS SIGNED) AS rt_expires_at, \
             CAST(issued_at AS SIGNED) AS issued_at FROM `Token` ORDER BY id",
        )
        .load(&mut conn)
        .unwrap()
    })
}

/// What DIRAC 9.1.22's TokenDB (`getTokenForUserProvider`, `getTokensByUserID`, and the table's
/// `SHOW CREATE TABLE`) reads from `db`, through tests/dirac-client/tokendb_read.py in DIRAC's
/// server venv (the one with MySQLdb).
fn read_with_diracs_tokendb(db: &TestDb, pairs: &[(&str, &str)]) -> Value {
    let venv = venv("DIRAC_SERVER_VENV", "dirac-server-9.1.22");
    assert!(
        venv.join("bin/python").exists(),
        "DIRAC's server venv is not installed at {}: run tests/dirac-client/setup.sh --server \
         (tests/setup.sh does)",
        venv.display()
    );
    // mysql://user[:password]@host:port/name
    let rest = db.url.split_once("://").unwrap().1;
    let (credentials, address) = rest.rsplit_once('@').unwrap();
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (host_port, name) = address.split_once('/').unwrap();
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
    let fixture = json!({
        "db": {"host": host, "port": port, "user": user, "password": password, "name": name},
        "pairs": pairs,
    });
    let path = db.dir.path().join("tokendb-fixture.json");
    std::fs::write(&path, fixture.to_string()).unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dirac-client/tokendb_read.py");
    let output = Command::new(venv.join("bin/python"))
        .arg(script)
        .arg(&path)
        .env_remove("REQUESTS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "DIRAC's TokenDB failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// The refresh token DIRAC's getTokenForUserProvider returns for the pair, if any.
fn diracs_refresh_token(read: &Value, user_id: &str, provider: &str) -> Option<String> {
    let token = &read["tokens"][format!("{user_id} {provider}")];
    token
        .get("refresh_token")
        .map(|t| t.as_str().unwrap().to_owned())
}

/// (1) Our usable credentials reach DIRAC's table, which the export creates as DIRAC does, and
/// DIRAC's own TokenDB code hands out our refresh tokens; the others are counted, not exported.
async fn diracs_own_tokendb_reads_what_the_export_wrote(backend: Backend) {
    let store = TestStore::new(backend).await;
    let config = TestConfig::on(&store.db).write("tm.cfg");
    let now = unix_now();
    store_token(
        &store.database,
        new_token("alice", "IAM", "secret-rt-alice", "secret-at-alice"),
    )
    .await;
    store_token(
        &store.database,
        new_token("alice", "CERN", "secret-rt-alice-cern", "secret-at-ac"),
    )
    .await;
    store_token(
        &store.database,
        new_token("bob", "IAM", "secret-rt-bob", "secret-at-bob"),
    )
    .await;
    let bob = get_credential(&store.database, "bob", "IAM")
        .await
        .unwrap()
        .unwrap();
    let version = bob.version();
    store
        .database
        .run(DbOperation::MarkNeedsRedelegation, move |store, conn| {
            store.mark_needs_redelegation(conn, version, now)
        })
        .await
        .unwrap();
    let mut expired = new_token("carol", "IAM", "secret-rt-carol", "secret-at-carol");
    expired.rt_expires_at = now - 10;
    store_token(&store.database, expired).await;
    store_token(
        &store.database,
        new_token("dave", "IAM", "secret-rt-dave", "secret-at-dave"),
    )
    .await;
    store
        .db
        .execute_raw("UPDATE tokens SET key_id = 'k-gone' WHERE user_id = 'dave'");
    // The test's own DB actor keeps sessions open on PostgreSQL and MariaDB: --force (their
    // refusal is tested in kept_dirac_rows_dry_run_and_refusals).
    let force: &[&str] = if backend == Backend::Sqlite {
        &[]
    } else {
        &["--force"]
    };

    let dirac = TestDb::new(Backend::Mysql);
    // No confirmation: refused, nothing touched, not even the table created.
    let (ok, stdout, stderr) = export(&config, &dirac, force, &[]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("DIRAC keeps tokens in clear text") && stderr.contains(CONFIRM),
        "{stderr}"
    );
    assert_eq!(dirac_rows(&dirac), None);

    let dry = exported(&config, &dirac, &["--dry-run"], &[]);
    assert!(dry.starts_with("dry run: nothing written"), "{dry}");
    let expected = "exported=2 replaced=0 unchanged=0 kept_dirac=0 skipped_needs_redelegation=1 \
         skipped_expired=1 failed=1";
    assert_eq!(summary(&dry), expected);
    assert_eq!(dirac_rows(&dirac), None, "a dry run creates nothing");

    let mut args = vec![CONFIRM];
    args.extend_from_slice(force);
    let (ok, first, stderr) = export(&config, &dirac, &args, &[]);
    assert!(ok, "{first}{stderr}");
    assert_eq!(summary(&first), expected);
    assert!(
        stderr.contains("now holds these refresh tokens in clear text"),
        "{stderr}"
    );
    if backend != Backend::Sqlite {
        assert!(
            stderr.contains("warning: --force: exporting although")
                && stderr.contains("other sessions are connected to"),
            "{stderr}"
        );
    }
    assert!(
        first.contains("read 5 credentials from our database and 0 rows from DIRAC's Token table"),
        "{first}"
    );
    assert!(
        first.contains("(user_id \"dave\", provider \"IAM\"): does not decrypt"),
        "{first}"
    );
    // The audit trail names each credential handed to DIRAC.
    let audit = run(
        &["audit", "--json", "--config", config.to_str().unwrap()],
        &[],
    );
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let records: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let mut exports: Vec<(&str, &str)> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| record["kind"] == json!("export"))
        .map(|record| {
            (
                record["provider"].as_str().unwrap(),
                record["detail"].as_str().unwrap(),
            )
        })
        .collect();
    exports.sort();
    let detail = format!("exported to {}", dirac.url);
    assert_eq!(
        exports,
        [("CERN", detail.as_str()), ("IAM", detail.as_str())],
        "{records}"
    );
    let rows = dirac_rows(&dirac).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        // No access token is handed over, and DIRAC's purge by expires_at keeps the row as long
        // as its refresh token lives.
        assert_eq!(row.access_token, "");
        assert_eq!(row.expires_at, row.rt_expires_at);
        assert!(row.rt_expires_at > now);
    }

    let pairs = [
        ("alice", "IAM"),
        ("alice", "CERN"),
        ("bob", "IAM"),
        ("carol", "IAM"),
        ("dave", "IAM"),
    ];
    let read = read_with_diracs_tokendb(&dirac, &pairs);
    assert_eq!(
        diracs_refresh_token(&read, "alice", "IAM").as_deref(),
        Some("secret-rt-alice")
    );
    assert_eq!(
        diracs_refresh_token(&read, "alice", "CERN").as_deref(),
        Some("secret-rt-alice-cern")
    );
    let alice = &read["tokens"]["alice IAM"];
    assert_eq!(alice["scope"], json!("openid profile"));
    assert_eq!(alice["client_id"], json!("tm-client"));
    assert_eq!(alice["token_type"], json!("Bearer"));
    for (user, _) in &pairs[2..] {
        assert_eq!(read["tokens"][format!("{user} IAM")], Value::Null, "{user}");
    }
    assert_eq!(read["rows_by_user"]["alice"], json!(2));

    // The table is the one DIRAC's TokenDB creates itself on an empty database.
    let diracs_own = TestDb::new(Backend::Mysql);
    let created_by_dirac = read_with_diracs_tokendb(&diracs_own, &[]);
    assert_eq!(read["show_create"], created_by_dirac["show_create"]);

    // Again: nothing changes.
    let again = exported(&config, &dirac, &args, &[]);
    assert_eq!(
        summary(&again),
        "exported=0 replaced=0 unchanged=2 kept_dirac=0 skipped_needs_redelegation=1 \
         skipped_expired=1 failed=1"
    );
    assert_eq!(dirac_rows(&dirac).unwrap(), rows);
}

/// (2) DIRAC → import → a rotation by the service at the real IdP → export: DIRAC's table holds
/// the rotated refresh token, which still refreshes (the grant is alive), and a second import
/// finds nothing to do. The export is refused while the service runs.
#[test]
fn a_round_trip_through_a_rotation_keeps_the_grant_alive() {
    let setup = setup_with(TestDb::new(Backend::Sqlite), 1, &[], |_| {});
    let config = setup.config_path().to_owned();
    let dirac = dirac_tokendb();
    let now = unix_now();
    let grant = setup.idp.grant("id-plain", SCOPE);
    insert_dirac_row(
        &dirac,
        Some("id-plain"),
        IDP,
        &grant.refresh_token,
        now - 100,
        now + 86_400,
        false,
    );
    // The login delegated what the group asks for.
    dirac.execute_raw(&format!("UPDATE `Token` SET scope = '{SCOPE}'"));
    let import = |dirac: &TestDb| {
        let output = run(
            &[
                "import-dirac-tokendb",
                "--config",
                config.to_str().unwrap(),
                &dirac.url,
            ],
            &[],
        );
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}{}", stderr(&output));
        stdout
    };
    assert!(import(&dirac).contains("imported=1 updated=0 unchanged=0"));

    // A refresh the service must make (the imported access token is not a real one): the IdP
    // rotates the refresh token, and the service stores the new one.
    let reply = setup.get_token(Some("plain"), None, 100_000);
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    assert_eq!(setup.idp.stats().refreshes("id-plain"), 1);

    // While the service runs, the export is refused.
    let secrets = [grant.refresh_token.as_str()];
    let (ok, stdout, stderr) = export(&config, &dirac, &[CONFIRM], &secrets);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("refusing to export while a tokenmanager service may be running")
            && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(dirac_rows(&dirac).unwrap().len(), 1);

    let mut setup = setup;
    setup.processes[0].signal("TERM");
    setup.processes[0].wait();
    let out = exported(&config, &dirac, &[CONFIRM], &secrets);
    assert_eq!(
        summary(&out),
        "exported=0 replaced=1 unchanged=0 kept_dirac=0 skipped_needs_redelegation=0 \
         skipped_expired=0 failed=0"
    );
    let read = read_with_diracs_tokendb(&dirac, &[("id-plain", IDP)]);
    let rotated = diracs_refresh_token(&read, "id-plain", IDP).expect("DIRAC finds a token");
    assert_ne!(
        rotated, grant.refresh_token,
        "the rotated token, not DIRAC's old one"
    );
    assert_eq!(read["rows_by_user"]["id-plain"], json!(1));

    // Importing it back finds our own token: nothing to do.
    assert!(import(&dirac).contains("imported=0 updated=0 unchanged=1 kept_ours=0"));

    // DIRAC's TokenManager would now refresh with it: the grant is alive.
    let refreshed = setup.idp.refresh("tm-basic", &rotated, None, None);
    assert!(refreshed.is_ok(), "{refreshed:?}");
    assert!(setup.idp.grant_alive("id-plain"));
}

/// (3) The replace rule: DIRAC's rows older than ours go, a DIRAC login newer than ours stays,
/// a pair only DIRAC knows is left alone; a dry run writes nothing; other sessions on our
/// database refuse the export unless --force.
#[actix::test]
async fn kept_dirac_rows_dry_run_and_refusals() {
    let store = TestStore::new(Backend::Mysql).await;
    let config = TestConfig::on(&store.db).write("tm.cfg");
    let now = unix_now();
    for user in ["u1", "u2", "u3"] {
        let refresh = format!("secret-rt-{user}-ours");
        store_token(
            &store.database,
            new_token(user, "IAM", &refresh, "secret-at"),
        )
        .await;
    }
    let written = get_credential(&store.database, "u1", "IAM")
        .await
        .unwrap()
        .unwrap()
        .updated_at;
    let dirac = dirac_tokendb();
    let live = now + 86_400;
    insert_dirac_row(
        &dirac,
        Some("u1"),
        "IAM",
        "secret-rt-u1-a",
        written - 500,
        live,
        false,
    );
    insert_dirac_row(
        &dirac,
        Some("u1"),
        "IAM",
        "secret-rt-u1-b",
        written - 400,
        live,
        true,
    );
    // u2 logged in to DIRAC after our last write of u2's credential.
    insert_dirac_row(
        &dirac,
        Some("u2"),
        "IAM",
        "secret-rt-u2-dirac",
        written + 60,
        live,
        false,
    );
    insert_dirac_row(
        &dirac,
        Some("u3"),
        "IAM",
        "secret-rt-u3-ours",
        written - 10,
        live,
        false,
    );
    insert_dirac_row(
        &dirac,
        Some("u4"),
        "IAM",
        "secret-rt-u4-dirac",
        written,
        live,
        false,
    );
    let before = dirac_rows(&dirac).unwrap();

    // The test's DB actor holds sessions on our database: refused, unless --force.
    let (ok, stdout, stderr) = export(&config, &dirac, &[CONFIRM], &[]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("other sessions are connected to"),
        "{stderr}"
    );
    assert_eq!(dirac_rows(&dirac).unwrap(), before);

    let expected = "exported=0 replaced=1 unchanged=1 kept_dirac=1 skipped_needs_redelegation=0 \
                    skipped_expired=0 failed=0";
    let dry = exported(&config, &dirac, &["--dry-run"], &[]);
    assert_eq!(summary(&dry), expected);
    assert_eq!(
        dirac_rows(&dirac).unwrap(),
        before,
        "a dry run writes nothing"
    );

    let out = exported(&config, &dirac, &[CONFIRM, "--force"], &[]);
    assert_eq!(summary(&out), expected);
    let after = dirac_rows(&dirac).unwrap();
    let held: Vec<(&str, &str)> = after
        .iter()
        .map(|row| (row.user_id.as_str(), row.refresh_token.as_str()))
        .collect();
    assert_eq!(
        held,
        [
            ("u2", "secret-rt-u2-dirac"),
            ("u3", "secret-rt-u3-ours"),
            ("u4", "secret-rt-u4-dirac"),
            ("u1", "secret-rt-u1-ours"),
        ]
    );
    assert_eq!(after[..3], before[2..], "DIRAC's other rows are untouched");
    assert_eq!(after[3].issued_at, written);

    let again = exported(&config, &dirac, &[CONFIRM, "--force"], &[]);
    assert_eq!(
        summary(&again),
        "exported=0 replaced=0 unchanged=2 kept_dirac=1 skipped_needs_redelegation=0 \
         skipped_expired=0 failed=0"
    );
    assert_eq!(dirac_rows(&dirac).unwrap(), after);
}

/// (4) The rotation race: a credential written while the export runs (here, while DIRAC's table
/// is locked and the export waits for it) makes the export roll DIRAC's transaction back and
/// fail, whatever --force says: DIRAC never gets a refresh token that is already rotated.
#[actix::test]
async fn a_credential_written_during_the_export_rolls_it_back() {
    let store = TestStore::new(Backend::Sqlite).await;
    let config = TestConfig::on(&store.db).write("tm.cfg");
    store_token(
        &store.database,
        new_token("u1", "IAM", "secret-rt-u1", "secret-at-u1"),
    )
    .await;
    let dirac = dirac_tokendb();
    let before = dirac_rows(&dirac).unwrap();

    let mut locker = MysqlConnection::establish(&dirac.url).unwrap();
    locker.batch_execute("LOCK TABLES `Token` WRITE").unwrap();
    let export = Command::new(crate::process::BINARY)
        .args(["export-dirac-tokendb", "--config", config.to_str().unwrap()])
        .args([dirac.url.as_str(), CONFIRM, "--force"])
        .env_remove("TOKENMANAGER_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the export waits for DIRAC's table: it has read our credentials by then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            count: i64,
        }
        let waiting: Count = diesel::sql_query(
            "SELECT COUNT(*) AS count FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND STATE LIKE '%lock%'",
        )
        .get_result(&mut locker)
        .unwrap();
        if waiting.count > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the export never waited for DIRAC's table"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A replica still running rotates u1's token meanwhile.
    let u1 = get_credential(&store.database, "u1", "IAM")
        .await
        .unwrap()
        .unwrap();
    let update = tokenmanager::db::TokenUpdate {
        refresh_token: tokenmanager::domain::Secret::new("secret-rt-u1-rotated"),
        rt_expires_at: u1.rt_expires_at,
        access_token: None,
        expires_at: 0,
        expires_in: 0,
        token_type: None,
        scope: u1.scope.clone(),
        audience: None,
    };
    crate::support::store_refreshed(&store.database, u1.version(), "u1", "IAM", update)
        .await
        .unwrap();
    locker.batch_execute("UNLOCK TABLES").unwrap();

    let output = export.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("1 of our credentials changed while exporting")
            && stderr.contains("nothing was written to DIRAC"),
        "{stderr}"
    );
    assert!(!stdout.contains("secret-") && !stderr.contains("secret-"));
    assert_eq!(dirac_rows(&dirac).unwrap(), before, "rolled back");

    // Run again with nothing running: DIRAC gets the rotated token.
    exported(&config, &dirac, &[CONFIRM], &[]);
    let rows = dirac_rows(&dirac).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].refresh_token, "secret-rt-u1-rotated");
}
