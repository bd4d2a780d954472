//! Every storage operation, on each backend.

use tokenmanager::actors::db::DbOperation;
use tokenmanager::config::Backend;
use tokenmanager::db::{CredentialCount, DbError, TokenUpdate};
use tokenmanager::domain::{CredentialState, Secret, unix_now};

use futures_util::future::join_all;

use crate::on_every_backend;
use crate::support::{
    self, TestStore, get_credential, new_token, remove_tokens, store_token, tokens_by_user_id,
    update_token,
};

on_every_backend!(
    migrations_run_once_from_empty,
    update_token_inserts_then_replaces_and_returns_the_old_row,
    concurrent_updates_keep_one_row_per_user_and_provider,
    tokens_by_user_id_and_remove_tokens_span_providers_of_one_user_only,
    purge_goes_by_refresh_token_expiry,
    refresh_writes_are_compare_and_set_on_the_generation,
    needs_redelegation_is_compare_and_set_and_cleared_by_a_new_login,
    the_grant_scope_is_a_logins_and_refreshes_keep_it,
    the_migration_takes_each_rows_scope_as_its_grant,
    credentials_are_counted_by_state_with_the_usable_ones_expiring_in_each_window,
);

async fn migrations_run_once_from_empty(backend: Backend) {
    let store = TestStore::new(backend).await;
    let again = store.database.migrate().await.unwrap();
    assert!(
        again.is_empty(),
        "a migrated database has nothing pending: {again:?}"
    );
    let rows = tokens_by_user_id(&store.database, "nobody").await.unwrap();
    assert!(rows.is_empty());
}

async fn update_token_inserts_then_replaces_and_returns_the_old_row(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    let now = unix_now();
    let first = new_token("sub-1", "IAM", "rt-one", "at-one");
    let old = update_token(db, first.clone(), now).await.unwrap();
    assert!(old.is_none());

    let stored = get_credential(db, "sub-1", "IAM").await;
    let stored = stored.unwrap().expect("the row just written");
    assert_eq!(stored.refresh_token.expose(), "rt-one");
    assert_eq!(
        stored.access_token.as_ref().map(Secret::expose),
        Some("at-one")
    );
    assert_eq!(
        (stored.generation, stored.state),
        (1, CredentialState::Active)
    );
    assert_eq!(
        (stored.scope.as_str(), stored.expires_in),
        ("openid profile", 3600)
    );
    assert_eq!(stored.rt_expires_at, first.rt_expires_at);
    assert_eq!(stored.client_id.as_deref(), Some("tm-client"));
    assert_eq!((stored.created_at, stored.updated_at), (now, now));

    let second = new_token("sub-1", "IAM", "rt-two", "at-two");
    let old = update_token(db, second, now + 5).await.unwrap();
    let old = old.expect("the replaced row is returned");
    assert_eq!(old.refresh_token.expose(), "rt-one");
    assert_eq!(old.generation, 1);

    let rows = tokens_by_user_id(db, "sub-1").await.unwrap();
    assert_eq!(rows.len(), 1, "one row per (user, provider)");
    assert_eq!(rows[0].refresh_token.expose(), "rt-two");
    assert_eq!(rows[0].generation, 2);
    assert_eq!(rows[0].id, stored.id, "replaced in place");
    assert_eq!((rows[0].created_at, rows[0].updated_at), (now, now + 5));
}

async fn concurrent_updates_keep_one_row_per_user_and_provider(backend: Backend) {
    let store = TestStore::new(backend).await;
    let writes = (0..24).map(|i| {
        let db = store.database.clone();
        async move {
            let token = new_token("sub-race", "IAM", &format!("rt-{i}"), &format!("at-{i}"));
            update_token(&db, token, unix_now()).await
        }
    });
    let results = join_all(writes).await;
    let replaced = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(replaced, 23, "every write but the first replaced a row");

    let rows = tokens_by_user_id(&store.database, "sub-race")
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].generation, 24,
        "each write bumped the generation once"
    );
    assert!(rows[0].refresh_token.expose().starts_with("rt-"));
}

async fn tokens_by_user_id_and_remove_tokens_span_providers_of_one_user_only(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    for (user, provider) in [("alice", "IAM"), ("alice", "CheckIn"), ("bob", "IAM")] {
        let token = new_token(user, provider, &format!("rt-{user}-{provider}"), "at");
        store_token(db, token).await;
    }
    let alice = tokens_by_user_id(db, "alice").await.unwrap();
    let providers: Vec<&str> = alice.iter().map(|t| t.provider.as_str()).collect();
    assert_eq!(providers, ["CheckIn", "IAM"]);
    assert_eq!(alice[1].refresh_token.expose(), "rt-alice-IAM");

    assert_eq!(remove_tokens(db, "alice").await.unwrap(), 2);
    assert_eq!(remove_tokens(db, "alice").await.unwrap(), 0);
    assert_eq!(remove_tokens(db, "").await.unwrap(), 0);
    assert!(tokens_by_user_id(db, "alice").await.unwrap().is_empty());
    let bob = tokens_by_user_id(db, "bob").await.unwrap();
    assert_eq!(bob.len(), 1, "another user's row is untouched");
}

async fn purge_goes_by_refresh_token_expiry(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    let now = unix_now();
    let mut short_refresh = new_token("short", "IAM", "rt-short", "at");
    short_refresh.rt_expires_at = now + 10;
    let mut expired_access = new_token("long", "IAM", "rt-long", "at");
    expired_access.expires_at = now - 3600;
    for token in [short_refresh, expired_access] {
        update_token(db, token, now).await.unwrap();
    }
    let purge = |now| {
        db.run(DbOperation::PurgeExpired, move |store, conn| {
            store.purge_expired(conn, now)
        })
    };
    assert_eq!(purge(now).await.unwrap(), 0);
    assert_eq!(purge(now + 60).await.unwrap(), 1);
    assert!(tokens_by_user_id(db, "short").await.unwrap().is_empty());
    let kept = tokens_by_user_id(db, "long").await.unwrap();
    assert_eq!(
        kept.len(),
        1,
        "an expired access token does not make a credential useless"
    );
}

fn refreshed(refresh: &str, access: &str) -> TokenUpdate {
    let now = unix_now();
    TokenUpdate {
        refresh_token: Secret::new(refresh),
        rt_expires_at: now + 7200,
        access_token: Some(Secret::new(access)),
        expires_at: now + 600,
        expires_in: 600,
        token_type: Some("Bearer".into()),
        scope: "compute.read openid".into(),
        audience: Some("https://ce.example.org".into()),
    }
}

async fn refresh_writes_are_compare_and_set_on_the_generation(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    store_token(db, new_token("sub", "IAM", "rt-1", "at-1")).await;
    let read = get_credential(db, "sub", "IAM").await;
    let v1 = read.unwrap().unwrap().version();

    let store_refreshed =
        |expected, update| support::store_refreshed(db, expected, "sub", "IAM", update);
    let written = store_refreshed(v1, refreshed("rt-2", "at-2"))
        .await
        .unwrap();
    assert_eq!(written.generation, v1.generation + 1);
    assert_eq!(written.refresh_token.expose(), "rt-2");
    assert_eq!(written.audience.as_deref(), Some("https://ce.example.org"));
    assert_eq!(written.scope, "compute.read openid");

    let stale = store_refreshed(v1, refreshed("rt-stale", "at-stale")).await;
    assert!(matches!(stale, Err(DbError::Conflict { .. })), "{stale:?}");

    // updateToken (a new login) also moves the generation: a refresh begun before it loses.
    let v2 = written.version();
    store_token(db, new_token("sub", "IAM", "rt-login", "at")).await;
    let lost = store_refreshed(v2, refreshed("rt-late", "at-late")).await;
    assert!(matches!(lost, Err(DbError::Conflict { .. })));
    let now_stored = get_credential(db, "sub", "IAM").await;
    assert_eq!(
        now_stored.unwrap().unwrap().refresh_token.expose(),
        "rt-login"
    );

    // A credential deleted and stored again is a new row: old versions stay stale.
    remove_tokens(db, "sub").await.unwrap();
    store_token(db, new_token("sub", "IAM", "rt-new", "at")).await;
    let again = store_refreshed(v1, refreshed("rt-ghost", "at")).await;
    assert!(matches!(again, Err(DbError::Conflict { .. })));
}

async fn needs_redelegation_is_compare_and_set_and_cleared_by_a_new_login(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    store_token(db, new_token("sub", "IAM", "rt", "at")).await;
    let credential = || get_credential(db, "sub", "IAM");
    let v1 = credential().await.unwrap().unwrap().version();
    let mark = || {
        db.run(DbOperation::MarkNeedsRedelegation, move |store, conn| {
            store.mark_needs_redelegation(conn, v1, unix_now())
        })
    };
    mark().await.unwrap();
    let marked = credential().await.unwrap().unwrap();
    assert_eq!(marked.state, CredentialState::NeedsRedelegation);
    let stale = mark().await;
    assert!(matches!(stale, Err(DbError::Conflict { .. })));

    store_token(db, new_token("sub", "IAM", "rt-new", "at")).await;
    let relogged = credential().await.unwrap().unwrap();
    assert_eq!(relogged.state, CredentialState::Active);
}

async fn the_grant_scope_is_a_logins_and_refreshes_keep_it(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    store_token(db, new_token("sub", "IAM", "rt-1", "at-1")).await;
    let login = get_credential(db, "sub", "IAM").await.unwrap().unwrap();
    assert_eq!(login.grant_scope, "openid profile");

    let written =
        support::store_refreshed(db, login.version(), "sub", "IAM", refreshed("rt-2", "at-2"))
            .await
            .unwrap();
    assert_eq!(written.scope, "compute.read openid");
    assert_eq!(written.grant_scope, "openid profile", "a refresh keeps it");

    let mut relogin = new_token("sub", "IAM", "rt-login", "at");
    relogin.scope = "openid storage.read:/".into();
    store_token(db, relogin).await;
    let relogged = get_credential(db, "sub", "IAM").await.unwrap().unwrap();
    assert_eq!(relogged.grant_scope, "openid storage.read:/");
}

async fn the_migration_takes_each_rows_scope_as_its_grant(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    store_token(db, new_token("sub", "IAM", "rt-1", "at-1")).await;
    let v1 = get_credential(db, "sub", "IAM")
        .await
        .unwrap()
        .unwrap()
        .version();
    support::store_refreshed(db, v1, "sub", "IAM", refreshed("rt-2", "at-2"))
        .await
        .unwrap();
    let mut unscoped = new_token("other", "IAM", "rt-other", "at");
    unscoped.scope = String::new();
    store_token(db, unscoped).await;

    // A row the previous version refreshed: its login's scope ("openid profile") is lost.
    store.db.revert_migrations_through("2026-11-30-000001");
    let upgraded = TestStore::open_database(&store.db, &store.keyring_file);
    let reapplied = upgraded.migrate().await.unwrap();
    assert_eq!(reapplied.len(), support::migrations_of(backend) - 3);
    let row = get_credential(&upgraded, "sub", "IAM")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.grant_scope, "compute.read openid",
        "the refresh's scope"
    );
    assert_eq!(row.refresh_token.expose(), "rt-2");
    let other = get_credential(&upgraded, "other", "IAM")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.grant_scope, "", "no scope, unknown grant");
}

/// The rolling-upgrade rule (docs/OPERATIONS.md#rolling-upgrades): the previous release keeps
/// working on the new schema, so every migration after a backend's first only adds.
#[test]
fn migrations_after_the_first_only_add() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let forbidden = [
        "DROP ",
        "RENAME",
        "MODIFY ",
        "CHANGE ",
        " TYPE ",
        "ALTER COLUMN",
    ];
    let mut violations = Vec::new();
    for backend in ["sqlite", "postgres", "mysql"] {
        let mut migrations: Vec<_> = std::fs::read_dir(root.join(backend))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        migrations.sort();
        assert!(migrations.len() > 1, "{backend}: no migrations");
        for migration in &migrations[1..] {
            let sql = std::fs::read_to_string(migration.join("up.sql")).unwrap();
            let statements: Vec<String> = sql
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join(" ")
                .split(';')
                .map(|s| s.trim().to_uppercase())
                .filter(|s| !s.is_empty())
                .collect();
            for statement in statements {
                let drops_or_changes = forbidden.iter().any(|word| statement.contains(word));
                let not_null_without_default = statement.contains("ADD COLUMN")
                    && statement.contains("NOT NULL")
                    && !statement.contains("DEFAULT");
                if drops_or_changes || not_null_without_default {
                    violations.push(format!("{}: {statement}", migration.display()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "migrations the previous release could not run on:\n{}",
        violations.join("\n")
    );
}

async fn credentials_are_counted_by_state_with_the_usable_ones_expiring_in_each_window(
    backend: Backend,
) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    let now = unix_now();
    let stored = [
        ("in-1h", "IAM", 3600),
        ("in-2d", "IAM", 2 * 86_400),
        ("in-10d", "IAM", 10 * 86_400),
        ("expired", "IAM", -10),
        ("refused", "IAM", 3600),
        ("elsewhere", "other-idp", 3600),
    ];
    for (user, provider, expires_in) in stored {
        let mut token = new_token(user, provider, "rt", "at");
        token.rt_expires_at = now + expires_in;
        store_token(db, token).await;
    }
    let refused = get_credential(db, "refused", "IAM")
        .await
        .unwrap()
        .unwrap()
        .version();
    db.run(DbOperation::MarkNeedsRedelegation, move |store, conn| {
        store.mark_needs_redelegation(conn, refused, now)
    })
    .await
    .unwrap();

    let counts = db
        .run(DbOperation::CountCredentials, move |store, conn| {
            store.count_credentials(conn, now, [now + 86_400, now + 7 * 86_400])
        })
        .await
        .unwrap();
    let count = |provider: &str, state: &str, stored, expiring| CredentialCount {
        provider: provider.into(),
        state: state.into(),
        stored,
        expiring,
    };
    assert_eq!(
        counts,
        [
            // The expired one is stored but usable in no window.
            count("IAM", "active", 4, [1, 2]),
            count("IAM", "needs_redelegation", 1, [0, 0]),
            count("other-idp", "active", 1, [1, 1]),
        ]
    );
}
