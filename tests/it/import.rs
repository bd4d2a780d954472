//! `import-dirac-tokendb`: the binary copies a DIRAC `Token` table (as DIRAC creates it,
//! docs/DIRAC.md#the-token-table, on MariaDB) into our store on each backend, and a re-import never
//! overwrites ours.

use tokenmanager::actors::db::DbOperation;
use tokenmanager::config::Backend;
use tokenmanager::db::{ImportOutcome, StoredToken, TokenUpdate};
use tokenmanager::domain::{Secret, unix_now};

use crate::on_every_backend;
use crate::process::{configure, run, stderr};
use crate::support::{TestDb, TestStore, get_credential, new_token, store_refreshed, store_token};
use crate::test_config::TestConfig;

/// DIRAC's `Token` table as SQLAlchemy 2.0 creates it (docs/DIRAC.md#the-token-table), verbatim.
const DIRAC_TOKEN_DDL: &str = "CREATE TABLE `Token` (
  id INTEGER NOT NULL AUTO_INCREMENT,
  kid VARCHAR(255),
  user_id VARCHAR(255),
  provider VARCHAR(255),
  expires_at INTEGER NOT NULL,
  access_token TEXT NOT NULL,
  refresh_token TEXT NOT NULL,
  rt_expires_at INTEGER NOT NULL,
  client_id VARCHAR(48),
  token_type VARCHAR(40),
  scope TEXT,
  issued_at INTEGER NOT NULL,
  access_token_revoked_at INTEGER NOT NULL,
  refresh_token_revoked_at INTEGER NOT NULL,
  expires_in INTEGER NOT NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB CHARSET=utf8";

on_every_backend!(
    import_takes_the_newest_live_row_and_never_overwrites_ours,
    an_import_is_replaced_only_while_nobody_uses_it,
);

/// A DIRAC TokenDB of its own on MariaDB, with the empty `Token` table.
pub(crate) fn dirac_tokendb() -> TestDb {
    let db = TestDb::new(Backend::Mysql);
    db.execute_raw(DIRAC_TOKEN_DDL);
    db
}

/// One row as DIRAC's `updateToken` stores it; `kid` is NULL as DIRAC never sets it, and
/// `bare` leaves `client_id` and `token_type` NULL too.
pub(crate) fn insert_dirac_row(
    db: &TestDb,
    user_id: Option<&str>,
    provider: &str,
    refresh: &str,
    issued_at: i64,
    rt_expires_at: i64,
    bare: bool,
) {
    let user_id = user_id.map_or("NULL".to_owned(), |u| format!("'{u}'"));
    let (client_id, token_type) = if bare {
        ("NULL", "NULL")
    } else {
        ("'dirac-client'", "'Bearer'")
    };
    db.execute_raw(&format!(
        "INSERT INTO `Token` (kid, user_id, provider, expires_at, access_token, refresh_token, \
         rt_expires_at, client_id, token_type, scope, issued_at, access_token_revoked_at, \
         refresh_token_revoked_at, expires_in) VALUES (NULL, {user_id}, '{provider}', {}, \
         'at-{refresh}', '{refresh}', {rt_expires_at}, {client_id}, {token_type}, \
         'offline_access openid', {issued_at}, 0, 0, 3600)",
        issued_at + 3600
    ));
}

/// Runs the import; returns its standard output, after checking that no token is in it.
fn import(config: &std::path::Path, source: &TestDb, extra: &[&str]) -> String {
    let mut args = vec![
        "import-dirac-tokendb",
        "--config",
        config.to_str().unwrap(),
        &source.url,
    ];
    args.extend_from_slice(extra);
    let output = run(&args, &[]);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), stderr(&output));
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        !stdout.contains("rt-") && !stderr.contains("rt-") && !stdout.contains("at-"),
        "a token was printed: {stdout}{stderr}"
    );
    stdout.into_owned()
}

fn summary(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|line| line.starts_with("imported="))
        .unwrap_or_else(|| panic!("no summary line: {stdout}"))
}

async fn credential(store: &TestStore, user_id: &str, provider: &str) -> Option<StoredToken> {
    get_credential(&store.database, user_id, provider)
        .await
        .unwrap()
}

async fn refresh_token_of(store: &TestStore, user_id: &str, provider: &str) -> Option<String> {
    credential(store, user_id, provider)
        .await
        .map(|stored| stored.refresh_token.expose().to_owned())
}

async fn import_takes_the_newest_live_row_and_never_overwrites_ours(backend: Backend) {
    let store = TestStore::new(backend).await;
    let config = TestConfig::on(&store.db).write("tm.cfg");
    let dirac = dirac_tokendb();
    let now = unix_now();
    let live = now + 86_400;
    // alice at IAM three times (the newest by issued_at is not the last inserted), and at CERN.
    insert_dirac_row(
        &dirac,
        Some("alice"),
        "IAM",
        "rt-alice-1",
        now - 300,
        live,
        false,
    );
    insert_dirac_row(
        &dirac,
        Some("alice"),
        "IAM",
        "rt-alice-3",
        now - 100,
        live,
        false,
    );
    insert_dirac_row(
        &dirac,
        Some("alice"),
        "IAM",
        "rt-alice-2",
        now - 200,
        live,
        false,
    );
    insert_dirac_row(
        &dirac,
        Some("alice"),
        "CERN",
        "rt-alice-cern",
        now - 100,
        live,
        false,
    );
    insert_dirac_row(&dirac, Some("bob"), "IAM", "rt-bob-1", now - 50, live, true);
    insert_dirac_row(
        &dirac,
        Some("carol"),
        "IAM",
        "rt-carol",
        now - 900,
        now - 10,
        false,
    );
    insert_dirac_row(&dirac, Some("dave"), "IAM", "", now - 50, live, false);
    insert_dirac_row(&dirac, None, "IAM", "rt-nobody", now - 50, live, false);
    // erin logged in to us already: the service's row is never replaced by an import.
    insert_dirac_row(
        &dirac,
        Some("erin"),
        "IAM",
        "rt-erin-dirac",
        now - 50,
        live,
        false,
    );
    store_token(
        &store.database,
        new_token("erin", "IAM", "rt-erin-ours", "at-erin-ours"),
    )
    .await;

    let dry = import(&config, &dirac, &["--dry-run"]);
    assert!(dry.starts_with("dry run: nothing written"), "{dry}");
    assert_eq!(
        summary(&dry),
        "imported=3 updated=0 unchanged=0 kept_ours=1 skipped_expired=1 skipped_duplicate=2 refused=2"
    );
    assert!(credential(&store, "alice", "IAM").await.is_none());

    let first = import(&config, &dirac, &[]);
    assert_eq!(
        summary(&first),
        "imported=3 updated=0 unchanged=0 kept_ours=1 skipped_expired=1 skipped_duplicate=2 refused=2"
    );
    assert!(first.contains("read 9 rows from DIRAC's Token table at mysql://root@127.0.0.1:3306/"));
    assert!(
        first.contains(
            "refused row id=7 (user_id \"dave\", provider \"IAM\"): \
             Cannot store token without a refresh token."
        ),
        "{first}"
    );
    assert!(
        first.contains(
            "refused row id=8 (user_id \"\", provider \"IAM\"): userID must not be empty"
        ),
        "{first}"
    );

    let alice = credential(&store, "alice", "IAM").await.unwrap();
    assert_eq!(alice.refresh_token.expose(), "rt-alice-3");
    assert_eq!(
        alice.access_token.as_ref().unwrap().expose(),
        "at-rt-alice-3"
    );
    assert_eq!(
        (alice.issued_at, alice.expires_at, alice.rt_expires_at),
        (now - 100, now + 3500, live)
    );
    assert_eq!(
        (
            alice.scope.as_str(),
            alice.token_type.as_deref(),
            alice.client_id.as_deref()
        ),
        (
            "offline_access openid",
            Some("Bearer"),
            Some("dirac-client")
        )
    );
    assert_eq!(alice.grant_scope, alice.scope, "DIRAC's token is the grant");
    let bob = credential(&store, "bob", "IAM").await.unwrap();
    assert_eq!(bob.refresh_token.expose(), "rt-bob-1");
    assert_eq!((&bob.token_type, &bob.client_id), (&None, &None));
    assert_eq!(
        refresh_token_of(&store, "alice", "CERN").await.as_deref(),
        Some("rt-alice-cern")
    );
    assert_eq!(
        refresh_token_of(&store, "erin", "IAM").await.as_deref(),
        Some("rt-erin-ours")
    );
    for user in ["carol", "dave", ""] {
        assert!(credential(&store, user, "IAM").await.is_none(), "{user}");
    }

    // The same DIRAC data again: nothing changes, not even a generation.
    let again = import(&config, &dirac, &[]);
    assert_eq!(
        summary(&again),
        "imported=0 updated=0 unchanged=3 kept_ours=1 skipped_expired=1 skipped_duplicate=2 refused=2"
    );
    let alice_again = credential(&store, "alice", "IAM").await.unwrap();
    assert_eq!(alice_again.version(), alice.version());
    assert_eq!(alice_again.updated_at, alice.updated_at);

    // We rotate bob's token; meanwhile DIRAC, still running, stores newer tokens for bob and
    // alice. Alice's row is an untouched import and takes DIRAC's; bob's is ours now.
    let update = TokenUpdate {
        refresh_token: Secret::new("rt-bob-ours"),
        rt_expires_at: live,
        access_token: Some(Secret::new("at-bob-ours")),
        expires_at: now + 3600,
        expires_in: 3600,
        token_type: Some("Bearer".into()),
        scope: "openid".into(),
        audience: None,
    };
    store_refreshed(&store.database, bob.version(), "bob", "IAM", update)
        .await
        .unwrap();
    insert_dirac_row(&dirac, Some("bob"), "IAM", "rt-bob-2", now, live, false);
    insert_dirac_row(&dirac, Some("alice"), "IAM", "rt-alice-4", now, live, false);

    let dry = import(&config, &dirac, &["--dry-run"]);
    assert_eq!(
        summary(&dry),
        "imported=0 updated=1 unchanged=1 kept_ours=2 skipped_expired=1 skipped_duplicate=4 refused=2"
    );
    assert_eq!(
        refresh_token_of(&store, "alice", "IAM").await.as_deref(),
        Some("rt-alice-3")
    );
    let third = import(&config, &dirac, &[]);
    assert_eq!(summary(&third), summary(&dry));
    let alice = credential(&store, "alice", "IAM").await.unwrap();
    assert_eq!(alice.refresh_token.expose(), "rt-alice-4");
    assert_eq!(alice.generation, alice_again.generation + 1);
    assert_eq!(
        refresh_token_of(&store, "bob", "IAM").await.as_deref(),
        Some("rt-bob-ours")
    );
    assert_eq!(
        refresh_token_of(&store, "erin", "IAM").await.as_deref(),
        Some("rt-erin-ours")
    );

    // Once the service has refreshed alice's imported token, it is ours as well.
    let update = TokenUpdate {
        refresh_token: Secret::new("rt-alice-ours"),
        rt_expires_at: live,
        access_token: None,
        expires_at: 0,
        expires_in: 0,
        token_type: None,
        scope: "openid".into(),
        audience: None,
    };
    store_refreshed(&store.database, alice.version(), "alice", "IAM", update)
        .await
        .unwrap();
    insert_dirac_row(
        &dirac,
        Some("alice"),
        "IAM",
        "rt-alice-5",
        now + 1,
        live,
        false,
    );
    let fourth = import(&config, &dirac, &[]);
    assert_eq!(
        summary(&fourth),
        "imported=0 updated=0 unchanged=1 kept_ours=3 skipped_expired=1 skipped_duplicate=5 refused=2"
    );
    assert_eq!(
        refresh_token_of(&store, "alice", "IAM").await.as_deref(),
        Some("rt-alice-ours")
    );
}

/// The store's side of the re-import rule, through the DB actor: an imported row is replaced by a
/// newer DIRAC token only while no refresh holds its lease and no login has replaced it.
async fn an_import_is_replaced_only_while_nobody_uses_it(backend: Backend) {
    let store = TestStore::new(backend).await;
    let now = unix_now();
    let import = |refresh: &str, issued_at: i64, dry_run: bool| {
        let mut token = new_token("frank", "IAM", refresh, "at");
        token.issued_at = issued_at;
        store
            .database
            .run(DbOperation::ImportToken, move |store, conn| {
                store.import_token(conn, &token, now, dry_run)
            })
    };
    assert_eq!(
        import("rt-1", now - 10, true).await.unwrap(),
        ImportOutcome::Imported
    );
    assert!(
        credential(&store, "frank", "IAM").await.is_none(),
        "a dry run writes nothing"
    );
    assert_eq!(
        import("rt-1", now - 10, false).await.unwrap(),
        ImportOutcome::Imported
    );
    let imported = credential(&store, "frank", "IAM").await.unwrap();
    assert_eq!(
        import("rt-1", now - 10, false).await.unwrap(),
        ImportOutcome::Unchanged
    );
    // DIRAC's token is older than the one imported (an old dump): ours stays.
    assert_eq!(
        import("rt-0", now - 20, false).await.unwrap(),
        ImportOutcome::KeptOurs
    );

    // A refresh under way holds the lease: the import waits for the next run.
    let version = imported.version();
    let lease = store
        .database
        .run(DbOperation::TakeLease, move |store, conn| {
            store.take_lease(conn, version, "replica-1", now, now + 30)
        });
    assert!(lease.await.unwrap());
    assert_eq!(
        import("rt-2", now, false).await.unwrap(),
        ImportOutcome::KeptOurs
    );
    let id = imported.id;
    let release = store
        .database
        .run(DbOperation::ReleaseLease, move |store, conn| {
            store.release_lease(conn, id, "replica-1")
        });
    release.await.unwrap();
    assert_eq!(
        import("rt-2", now, true).await.unwrap(),
        ImportOutcome::Updated
    );
    assert_eq!(
        refresh_token_of(&store, "frank", "IAM").await.as_deref(),
        Some("rt-1")
    );
    assert_eq!(
        import("rt-2", now, false).await.unwrap(),
        ImportOutcome::Updated
    );
    assert_eq!(
        refresh_token_of(&store, "frank", "IAM").await.as_deref(),
        Some("rt-2")
    );

    // A new login through the service replaces the imported row: from then on it is ours.
    store_token(&store.database, new_token("frank", "IAM", "rt-login", "at")).await;
    assert_eq!(
        import("rt-3", now + 5, false).await.unwrap(),
        ImportOutcome::KeptOurs
    );
    assert_eq!(
        refresh_token_of(&store, "frank", "IAM").await.as_deref(),
        Some("rt-login")
    );
}

#[test]
fn import_refuses_other_schemes_and_unreadable_sources_without_showing_the_password() {
    let store = TestDb::new(Backend::Sqlite);
    let config = configure(&store, |_| {});
    let config = config.to_str().unwrap();
    let no_table = TestDb::new(Backend::Mysql);
    let no_table_url = no_table
        .url
        .replace("mysql://root@", "mysql://root:pw-s3cret@");
    let cases = [
        (
            "postgres://tm:pw-s3cret@127.0.0.1:5432/test".to_owned(),
            "give a mysql:// or mariadb:// URL (mysql://user:password@host:port/dbname), \
             not a postgres:// URL",
        ),
        (
            "mysql://root:pw-s3cret@127.0.0.1:1/TokenDB".to_owned(),
            "cannot connect to DIRAC's TokenDB at mysql://root:***@127.0.0.1:1/TokenDB",
        ),
        // MariaDB's root has no password: a wrong one is refused.
        (
            no_table_url.clone(),
            "cannot connect to DIRAC's TokenDB at mysql://root:***@127.0.0.1:3306/",
        ),
        (no_table.url.clone(), "cannot read DIRAC's Token table at"),
    ];
    for (url, expected) in cases {
        let output = run(&["import-dirac-tokendb", "--config", config, &url], &[]);
        let message = stderr(&output);
        assert!(!output.status.success(), "{url}: {message}");
        assert!(message.contains(expected), "{url}: {message}");
        assert!(
            !message.contains("pw-s3cret")
                && !String::from_utf8_lossy(&output.stdout).contains("pw-s3cret"),
            "{message}"
        );
        assert!(output.stdout.is_empty(), "nothing done for {url}");
    }
}
