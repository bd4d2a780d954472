//! `tokenmanager tokens list|show|revoke|verify`, the real binary on each backend: what it
//! prints (and that it never prints a token value unless asked), its exit codes, revocation at
//! the test IdP with running replicas told through the change feed, and verification against a
//! keyring that lost a key and a row that was altered.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use serde_json::{Value, json};
use tokenmanager::actors::db::DbOperation;
use tokenmanager::config::Backend;
use tokenmanager::db::ClientTokenKey;
use tokenmanager::domain::{Secret, unix_now};

use crate::get_token::{CE, setup_with};
use crate::on_every_backend;
use crate::process::{run, stderr};
use crate::replicas::within_the_bound;
use crate::support::{TestDb, TestStore, get_credential, new_token, store_token};
use crate::test_config::{IDP, TestConfig};

on_every_backend!(
    list_shows_every_credential_and_no_token_value,
    show_prints_every_column_and_values_only_when_asked,
    verify_finds_rows_under_a_removed_key_and_an_altered_row,
    revoke_revokes_at_the_idp_and_running_replicas_stop_serving,
);

/// The exit codes of docs/OPERATIONS.md#exit-codes-of-the-tokens-commands.
const NOT_FOUND: i32 = 3;
const NOT_REVOKED: i32 = 4;
const UNDECRYPTABLE: i32 = 5;

/// `tokenmanager tokens <args> --config <config>`.
fn tokens(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["tokens"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", config.to_str().unwrap()]);
    run(&all, &[])
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Both streams, for checks that no secret appears anywhere.
fn everything(output: &Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

fn assert_no_value(output: &Output, values: &[String]) {
    let text = everything(output);
    for value in values {
        assert!(!text.contains(value.as_str()), "{value} printed:\n{text}");
    }
}

fn exit_code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

/// The stored credentials of the listing tests and their token values: `u1` at IAM and CheckIn,
/// `u2` at IAM (its refresh token expiring in an hour, its refresh lease held), `u3` at IAM
/// sealed under key `k1`, which the keyring then loses (every other row is under `k2`), and
/// `u4` at IAM marked `needs_redelegation`.
struct Listed {
    _store: TestStore,
    config: PathBuf,
    values: Vec<String>,
}

async fn stored_credentials(backend: Backend) -> Listed {
    let store = TestStore::new(backend).await;
    let mut values = Vec::new();
    let mut stored = |user: &str, provider: &str| {
        let refresh = format!("RT-SECRET-{user}-{provider}-{}", backend.name());
        let access = format!("AT-SECRET-{user}-{provider}-{}", backend.name());
        values.extend([refresh.clone(), access.clone()]);
        new_token(user, provider, &refresh, &access)
    };
    let under_k1 = stored("u3", "IAM");
    store_token(&store.database, under_k1).await;
    store.keyring_file.add_key(Some("k2")).unwrap();
    // A handle that knows k2, as a process started after the rotation.
    let database = TestStore::open_database(&store.db, &store.keyring_file);
    for (user, provider) in [
        ("u1", "IAM"),
        ("u1", "CheckIn"),
        ("u2", "IAM"),
        ("u4", "IAM"),
    ] {
        let mut token = stored(user, provider);
        if user == "u2" {
            token.rt_expires_at = unix_now() + 3600;
        }
        store_token(&database, token).await;
    }
    let lease_until = unix_now() + 600;
    store.db.execute_raw(&format!(
        "UPDATE tokens SET lease_owner = 'replica-a:42:1', lease_expires_at = {lease_until} \
         WHERE user_id = 'u2'; \
         UPDATE tokens SET state = 'needs_redelegation' WHERE user_id = 'u4'"
    ));
    remove_key(&store, "k1");
    let config = TestConfig::on(&store.db).write("tm.cfg");
    Listed {
        _store: store,
        config,
        values,
    }
}

/// Rewrites the keyring file without key `id`, as an operator who removed an old key would.
fn remove_key(store: &TestStore, id: &str) {
    let path = store.keyring_file.path();
    let text = std::fs::read_to_string(path).unwrap();
    let kept: String = text
        .lines()
        .filter(|line| !line.starts_with(&format!("{id} ")))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(kept, text, "the keyring had {id}");
    std::fs::write(path, kept).unwrap();
}

/// The (user, provider, state) of each object of a `list --json`.
fn listed(output: &Output) -> Vec<(String, String, String)> {
    assert!(output.status.success(), "{}", stderr(output));
    let array: Value = serde_json::from_slice(&output.stdout).unwrap();
    array
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let text = |k: &str| row[k].as_str().unwrap().to_owned();
            (text("user_id"), text("provider"), text("state"))
        })
        .collect()
}

fn triple(user: &str, provider: &str, state: &str) -> (String, String, String) {
    (user.into(), provider.into(), state.into())
}

async fn list_shows_every_credential_and_no_token_value(backend: Backend) {
    let listed_credentials = stored_credentials(backend).await;
    let (config, values) = (&listed_credentials.config, &listed_credentials.values);

    let table = tokens(config, &["list"]);
    assert!(table.status.success(), "{}", stderr(&table));
    assert_no_value(&table, values);
    let text = stdout(&table);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("USER_ID") && lines[0].contains("KEY_ID"),
        "{text}"
    );
    assert_eq!(lines.len(), 6, "a header and five credentials:\n{text}");
    let line_of = |user: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{user} ")))
            .unwrap()
    };
    assert!(line_of("u3").contains("undecryptable"), "{text}");
    assert!(line_of("u3").contains(" k1 "), "{text}");
    assert!(line_of("u2").contains("replica-a:42:1"), "{text}");
    assert!(line_of("u2").contains(" UTC"), "{text}");
    assert!(line_of("u4").contains("needs_redelegation"), "{text}");
    assert!(
        stderr(&table).contains("5 stored credentials listed; 1 sealed under a key"),
        "{}",
        stderr(&table)
    );

    let all = tokens(config, &["list", "--json"]);
    assert_no_value(&all, values);
    assert_eq!(
        listed(&all),
        [
            triple("u1", "CheckIn", "active"),
            triple("u1", "IAM", "active"),
            triple("u2", "IAM", "active"),
            triple("u3", "IAM", "undecryptable"),
            triple("u4", "IAM", "needs_redelegation"),
        ]
    );
    let rows: Value = serde_json::from_slice(&all.stdout).unwrap();
    let u2 = &rows[2];
    let fields: Vec<&str> = u2.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "id",
            "user_id",
            "provider",
            "state",
            "generation",
            "key_id",
            "rt_expires_at",
            "updated_at",
            "lease_owner",
            "lease_expires_at"
        ]
    );
    assert_eq!(
        (&u2["key_id"], &u2["generation"], &u2["lease_owner"]),
        (&json!("k2"), &json!(1), &json!("replica-a:42:1"))
    );
    assert!(u2["rt_expires_at"].as_i64().unwrap() <= unix_now() + 3600);

    let filtered = |args: &[&str]| {
        let mut all = vec!["list", "--json"];
        all.extend_from_slice(args);
        listed(&tokens(config, &all))
    };
    assert_eq!(
        filtered(&["--user", "u1"]),
        [
            triple("u1", "CheckIn", "active"),
            triple("u1", "IAM", "active")
        ]
    );
    assert_eq!(
        filtered(&["--provider", "CheckIn"]),
        [triple("u1", "CheckIn", "active")]
    );
    assert_eq!(
        filtered(&["--state", "undecryptable"]),
        [triple("u3", "IAM", "undecryptable")]
    );
    assert_eq!(
        filtered(&["--state", "needs_redelegation"]),
        [triple("u4", "IAM", "needs_redelegation")]
    );
    // u3 is stored active, but listed (and filtered) as undecryptable.
    assert_eq!(filtered(&["--state", "active"]).len(), 3);
    assert_eq!(
        filtered(&["--expiring", "2h"]),
        [triple("u2", "IAM", "active")]
    );
    assert_eq!(filtered(&["--expiring", "7d"]).len(), 5);
    assert_eq!(filtered(&["--expiring", "30m"]), []);
    assert_eq!(
        filtered(&["--user", "u1", "--provider", "IAM", "--expiring", "2d"]),
        [triple("u1", "IAM", "active")]
    );

    let wrong = tokens(config, &["list", "--expiring", "7w"]);
    assert_eq!(exit_code(&wrong), 2);
    assert!(
        stderr(&wrong).contains("unknown unit 'w'"),
        "{}",
        stderr(&wrong)
    );
}

async fn show_prints_every_column_and_values_only_when_asked(backend: Backend) {
    let listed_credentials = stored_credentials(backend).await;
    let (config, values) = (&listed_credentials.config, &listed_credentials.values);

    let shown = tokens(config, &["show", "u2", "IAM"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert_no_value(&shown, values);
    let text = stdout(&shown);
    for (field, value) in [
        ("user_id", "u2"),
        ("provider", "IAM"),
        ("state", "active"),
        ("key_id", "k2"),
        ("access_token", "stored"),
        ("scope", "openid profile"),
        ("client_id", "tm-client"),
        ("lease_owner", "replica-a:42:1"),
        ("decrypts", "yes"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(field) && l.trim_end().ends_with(value)),
            "{field} {value}:\n{text}"
        );
    }
    for field in [
        "id",
        "generation",
        "rt_expires_at",
        "expires_at",
        "grant_scope",
        "issued_at",
        "refresh_token_revoked_at",
        "created_at",
        "updated_at",
        "import_generation",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{field} "))),
            "{field}:\n{text}"
        );
    }

    let json = tokens(config, &["show", "u2", "IAM", "--json"]);
    assert_no_value(&json, values);
    let object: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (
            &object["user_id"],
            &object["generation"],
            &object["decrypts"]
        ),
        (&json!("u2"), &json!(1), &json!("yes"))
    );

    let secrets = tokens(config, &["show", "u2", "IAM", "--show-values"]);
    assert!(secrets.status.success(), "{}", stderr(&secrets));
    let text = stdout(&secrets);
    let refresh = format!("RT-SECRET-u2-IAM-{}", backend.name());
    let access = format!("AT-SECRET-u2-IAM-{}", backend.name());
    assert!(text.contains(&refresh) && text.contains(&access), "{text}");
    assert!(
        stderr(&secrets).contains("WARNING: printing the secret token values of user 'u2'"),
        "{}",
        stderr(&secrets)
    );
    assert!(!stderr(&secrets).contains(&refresh));
    assert!(
        !text.contains("WARNING"),
        "stdout is no terminal here: the warning goes to stderr alone"
    );
    // On a terminal (util-linux's `script` gives it one), the warning is on stdout too.
    let on_a_terminal = format!(
        "{} tokens show u2 IAM --show-values --config {} 2>/dev/null",
        crate::process::BINARY,
        config.display()
    );
    let terminal = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &on_a_terminal, "/dev/null"])
        .output()
        .unwrap();
    assert!(terminal.status.success(), "{}", stderr(&terminal));
    let screen = stdout(&terminal);
    assert!(
        screen.contains("WARNING: printing the secret token values") && screen.contains(&refresh),
        "{screen}"
    );

    // A row under a key the keyring lost: shown, its failure named, no value.
    let lost = tokens(config, &["show", "u3", "IAM", "--show-values"]);
    assert!(lost.status.success(), "{}", stderr(&lost));
    assert_no_value(&lost, values);
    assert!(
        stdout(&lost).contains("no: refresh_token: the keyring has no key 'k1'"),
        "{}",
        stdout(&lost)
    );
    assert!(stdout(&lost).contains("undecryptable"));

    let missing = tokens(config, &["show", "u1", "Nowhere"]);
    assert_eq!(exit_code(&missing), NOT_FOUND, "{}", stderr(&missing));
    let message = stderr(&missing);
    assert!(
        message.contains("no stored credential of user 'u1' at 'Nowhere'")
            && message.contains("has credentials at: CheckIn, IAM")
            && message.contains("no identity provider 'Nowhere' is configured"),
        "{message}"
    );
    let nobody = tokens(config, &["show", "nobody", "IAM"]);
    assert_eq!(exit_code(&nobody), NOT_FOUND);
    assert!(
        stderr(&nobody).contains("user 'nobody' has no stored credential at all"),
        "{}",
        stderr(&nobody)
    );
}

async fn verify_finds_rows_under_a_removed_key_and_an_altered_row(backend: Backend) {
    let store = TestStore::new(backend).await;
    let mut values = Vec::new();
    for user in 0..5 {
        let (refresh, access) = (format!("RT-V-{user}"), format!("AT-V-{user}"));
        let token = new_token(&format!("old-{user}"), "IAM", &refresh, &access);
        store_token(&store.database, token).await;
        values.extend([refresh, access]);
    }
    store.keyring_file.add_key(Some("k2")).unwrap();
    let database = TestStore::open_database(&store.db, &store.keyring_file);
    for user in 0..3 {
        let (refresh, access) = (format!("RT-N-{user}"), format!("AT-N-{user}"));
        let token = new_token(&format!("new-{user}"), "IAM", &refresh, &access);
        store_token(&database, token).await;
        values.extend([refresh, access]);
    }
    // A shared client token, and a client-token row that holds none yet.
    for (digest, token) in [("digest-a", Some("CT-V-a")), ("digest-b", None)] {
        let key = ClientTokenKey {
            token_key: digest.into(),
            provider: "IAM".into(),
            scope: "compute.read".into(),
            audience: None,
        };
        let stored_key = key.clone();
        let row = database
            .run(DbOperation::ClientToken, move |store, conn| {
                store.client_token(conn, &stored_key, unix_now())
            })
            .await
            .unwrap();
        if let Some(token) = token {
            values.push(token.into());
            database
                .run(DbOperation::StoreClientToken, move |store, conn| {
                    let now = unix_now();
                    let secret = Secret::new(token);
                    store.store_client_token(
                        conn,
                        &key,
                        row.version,
                        &secret,
                        "Bearer",
                        now + 3600,
                        3600,
                        "compute.read",
                        now,
                    )
                })
                .await
                .unwrap();
        }
    }
    let config = TestConfig::on(&store.db).write("tm.cfg");

    let clean = tokens(&config, &["verify", "--batch", "2"]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert_no_value(&clean, &values);
    let text = stdout(&clean);
    assert!(
        text.contains("tokens: 8 rows; key k1: 5 decrypt, 0 do not; key k2: 3 decrypt, 0 do not"),
        "{text}"
    );
    assert!(
        text.contains("client_tokens: 2 rows; key k2: 1 decrypt, 0 do not; 1 without a token yet"),
        "{text}"
    );
    assert!(
        text.contains("all 9 stored rows decrypt with the keyring"),
        "{text}"
    );

    // The old key removed before every row was re-encrypted, and one row altered: its refresh
    // token copied into its access-token column.
    remove_key(&store, "k1");
    store
        .db
        .execute_raw("UPDATE tokens SET access_token = refresh_token WHERE user_id = 'new-1'");
    let failed = tokens(&config, &["verify", "--batch", "2"]);
    assert_eq!(exit_code(&failed), UNDECRYPTABLE, "{}", stderr(&failed));
    assert_no_value(&failed, &values);
    let text = stdout(&failed);
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAILED")).collect();
    assert_eq!(
        failures.len(),
        11,
        "both columns of five rows, one of one:\n{text}"
    );
    for user in 0..5 {
        for column in ["refresh_token", "access_token"] {
            assert!(
                failures
                    .iter()
                    .any(|l| l.contains(&format!("user 'old-{user}'"))
                        && l.contains(&format!(
                            "key 'k1', column {column}: the keyring has no key 'k1'"
                        ))),
                "old-{user} {column}:\n{text}"
            );
        }
    }
    assert!(
        failures.iter().any(|l| l.contains("user 'new-1'")
            && l.contains("column access_token: a stored access_token does not decrypt")),
        "{text}"
    );
    assert!(
        text.contains(
            "tokens: 8 rows; key k1 (not in the keyring): 0 decrypt, 5 do not; key k2: 2 \
             decrypt, 1 do not"
        ),
        "{text}"
    );
    assert!(
        stderr(&failed).contains("6 of 9 stored rows do not decrypt with the keyring"),
        "{}",
        stderr(&failed)
    );
}

async fn revoke_revokes_at_the_idp_and_running_replicas_stop_serving(backend: Backend) {
    let setup = setup_with(TestDb::new(backend), 0, &[], |_| {});
    setup.delegate("plain");
    let served = setup.get_token(Some("plain"), Some(CE), 0);
    assert_eq!(served.status(), Some(200), "{served:?}");
    let cached = served.body()["value"]["access_token"].clone();
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 0).body()["value"]["access_token"],
        cached,
        "served from the cache"
    );
    assert!(setup.idp.grant_alive("id-plain"));
    setup.idp.reset_stats();

    let revoked = tokens(setup.config_path(), &["revoke", "id-plain", IDP]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let done = Instant::now();
    assert!(
        stdout(&revoked).contains(&format!(
            "revoked its refresh token at the IdP and deleted the credential of 'id-plain' at \
             '{IDP}'"
        )),
        "{}",
        stdout(&revoked)
    );
    assert_eq!(setup.idp.stats().revocations(), 1);
    assert!(!setup.idp.grant_alive("id-plain"), "the grant is dead");
    within_the_bound(&setup, 0, "the revocation", done, |reply| {
        reply.body()["code"] == json!("no_token")
    });
    assert!(
        stderr(&revoked).contains("tokens revoke"),
        "the record of the revocation: {}",
        stderr(&revoked)
    );

    // The audit trail has it, as the command line's.
    let config = setup.config_path().to_str().unwrap().to_owned();
    let audit = run(
        &["--config", &config, "audit", "--user", "id-plain", "--json"],
        &[],
    );
    let records: Vec<Value> = serde_json::from_slice(&audit.stdout).unwrap();
    let revoke = records
        .iter()
        .find(|r| r["kind"] == "revoke")
        .unwrap_or_else(|| panic!("no revoke record: {records:#?}"));
    assert_eq!(revoke["protocol"], "cli");
    assert_eq!(revoke["provider"], IDP);
    assert!(
        revoke["detail"]
            .as_str()
            .unwrap()
            .starts_with("revoked at the IdP"),
        "{revoke}"
    );

    let again = tokens(setup.config_path(), &["revoke", "id-plain", IDP]);
    assert_eq!(exit_code(&again), NOT_FOUND, "{}", stderr(&again));
}

/// An IdP that refuses the revocation (a wrong client secret) or cannot be reached: nothing is
/// deleted, and the grant lives; `--force` deletes, and says that the grant lives on.
#[test]
fn revoke_deletes_nothing_the_idp_did_not_revoke_unless_forced() {
    let setup = setup_with(TestDb::new(Backend::Sqlite), 0, &[], |_| {});
    setup.delegate("plain");
    let refused = {
        let mut config = TestConfig::on(setup.db());
        config
            .test_idp(&setup.idp.issuer(), CE)
            .set("client_secret", "not-the-secret");
        config.write("refused.cfg")
    };
    // The tests' usual configuration: its IdP is https://127.0.0.1:1/, where nothing listens.
    let unreachable = TestConfig::on(setup.db()).write("unreachable.cfg");
    let still_stored = |config: &Path| {
        let shown = tokens(config, &["show", "id-plain", IDP]);
        shown.status.success()
    };

    let output = tokens(&refused, &["revoke", "id-plain", IDP]);
    assert_eq!(exit_code(&output), NOT_REVOKED, "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("was not revoked") && message.contains("401"),
        "{message}"
    );
    assert!(
        message.contains("Nothing was deleted; --force"),
        "{message}"
    );
    assert!(!message.contains("not-the-secret"), "{message}");
    assert!(still_stored(&refused));
    assert!(setup.idp.grant_alive("id-plain"));

    let output = tokens(&unreachable, &["revoke", "id-plain", IDP]);
    assert_eq!(exit_code(&output), NOT_REVOKED, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is unavailable"),
        "{}",
        stderr(&output)
    );
    assert!(still_stored(&unreachable));

    let output = tokens(&unreachable, &["revoke", "id-plain", IDP, "--force"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("Deleting the credential anyway (--force)"),
        "{}",
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("deleted, without revoking, the credential of 'id-plain'"),
        "{}",
        stdout(&output)
    );
    assert!(!still_stored(&unreachable));
    assert!(
        setup.idp.grant_alive("id-plain"),
        "what --force warns of: the grant lives on at the IdP"
    );
}

/// What stops a command before it reads anything: a keyring that is not there, a database that
/// does not answer or an SQLite file that does not exist.
#[actix::test]
async fn a_missing_keyring_or_database_is_a_clear_error() {
    let store = TestStore::new(Backend::Sqlite).await;
    store_token(&store.database, new_token("u1", "IAM", "rt", "at")).await;
    let config = TestConfig::on(&store.db).write("tm.cfg");
    let keyring = store.keyring_file.path().to_owned();
    let moved = keyring.with_extension("moved");
    std::fs::rename(&keyring, &moved).unwrap();
    let output = tokens(&config, &["list"]);
    assert_eq!(exit_code(&output), 1);
    let message = stderr(&output);
    assert!(
        message.contains("cannot read the encryption keyring")
            && message.contains(&keyring.display().to_string())
            && message.contains("need the keyring the service uses"),
        "{message}"
    );
    assert!(!keyring.exists(), "no keyring is made up");
    std::fs::rename(&moved, &keyring).unwrap();

    let nowhere = {
        let mut config = TestConfig::on(&store.db);
        config
            .database()
            .set("URL", "postgres://postgres@127.0.0.1:1/nothing");
        config.write("nowhere.cfg")
    };
    for command in [&["list"][..], &["show", "u1", "IAM"]] {
        let output = tokens(&nowhere, command);
        assert_eq!(exit_code(&output), 1, "{command:?}");
        assert!(
            stderr(&output).contains("cannot connect to postgres://postgres@127.0.0.1:1/nothing"),
            "{command:?}: {}",
            stderr(&output)
        );
    }
    let missing_file = {
        let mut config = TestConfig::on(&store.db);
        let path = store.db.dir.path().join("no-such.sqlite");
        config
            .database()
            .set("URL", format!("sqlite://{}", path.display()));
        (config.write("missing.cfg"), path)
    };
    let output = tokens(&missing_file.0, &["list"]);
    assert_eq!(exit_code(&output), 1);
    assert!(
        stderr(&output).contains(&format!(
            "the SQLite database {} does not exist",
            missing_file.1.display()
        )),
        "{}",
        stderr(&output)
    );
    assert!(!missing_file.1.exists(), "no database is made up");
    assert!(
        get_credential(&store.database, "u1", "IAM")
            .await
            .unwrap()
            .is_some()
    );
}
