//! Every storage operation, on each backend.

use tokenmanager::actors::db::{
    GetCredential, MarkNeedsRedelegation, Migrate, PurgeExpired, RemoveTokens, StoreRefreshed,
    TokensByUserId, UpdateToken,
};
use tokenmanager::config::Backend;
use tokenmanager::db::{DbError, TokenUpdate};
use tokenmanager::domain::{CredentialState, Secret, unix_now};

use futures_util::future::join_all;

use crate::on_every_backend;
use crate::support::{TestStore, new_token, store_token};

on_every_backend!(
    migrations_run_once_from_empty,
    update_token_inserts_then_replaces_and_returns_the_old_row,
    concurrent_updates_keep_one_row_per_user_and_provider,
    tokens_by_user_id_and_remove_tokens_span_providers_of_one_user_only,
    purge_goes_by_refresh_token_expiry,
    refresh_writes_are_compare_and_set_on_the_generation,
    needs_redelegation_is_compare_and_set_and_cleared_by_a_new_login,
);

async fn migrations_run_once_from_empty(backend: Backend) {
    let store = TestStore::new(backend).await;
    let again = store.database.call(Migrate {}).await.unwrap();
    assert!(
        again.is_empty(),
        "a migrated database has nothing pending: {again:?}"
    );
    let rows = store
        .database
        .call(TokensByUserId {
            user_id: "nobody".into(),
        })
        .await
        .unwrap();
    assert!(rows.is_empty());
}

async fn update_token_inserts_then_replaces_and_returns_the_old_row(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    let now = unix_now();
    let first = new_token("sub-1", "IAM", "rt-one", "at-one");
    let old = db
        .call(UpdateToken {
            token: first.clone(),
            now,
        })
        .await
        .unwrap();
    assert!(old.is_none());

    let stored = db
        .call(GetCredential {
            user_id: "sub-1".into(),
            provider: "IAM".into(),
        })
        .await;
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
    let old = db
        .call(UpdateToken {
            token: second,
            now: now + 5,
        })
        .await
        .unwrap();
    let old = old.expect("the replaced row is returned");
    assert_eq!(old.refresh_token.expose(), "rt-one");
    assert_eq!(old.generation, 1);

    let rows = db
        .call(TokensByUserId {
            user_id: "sub-1".into(),
        })
        .await
        .unwrap();
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
            db.call(UpdateToken {
                token,
                now: unix_now(),
            })
            .await
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

    let rows = store
        .database
        .call(TokensByUserId {
            user_id: "sub-race".into(),
        })
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
    let alice = db
        .call(TokensByUserId {
            user_id: "alice".into(),
        })
        .await
        .unwrap();
    let providers: Vec<&str> = alice.iter().map(|t| t.provider.as_str()).collect();
    assert_eq!(providers, ["CheckIn", "IAM"]);
    assert_eq!(alice[1].refresh_token.expose(), "rt-alice-IAM");

    assert_eq!(
        db.call(RemoveTokens {
            user_id: "alice".into()
        })
        .await
        .unwrap(),
        2
    );
    assert_eq!(
        db.call(RemoveTokens {
            user_id: "alice".into()
        })
        .await
        .unwrap(),
        0
    );
    assert_eq!(
        db.call(RemoveTokens {
            user_id: String::new()
        })
        .await
        .unwrap(),
        0
    );
    assert!(
        db.call(TokensByUserId {
            user_id: "alice".into()
        })
        .await
        .unwrap()
        .is_empty()
    );
    let bob = db
        .call(TokensByUserId {
            user_id: "bob".into(),
        })
        .await
        .unwrap();
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
        db.call(UpdateToken { token, now }).await.unwrap();
    }
    assert_eq!(db.call(PurgeExpired { now }).await.unwrap(), 0);
    assert_eq!(db.call(PurgeExpired { now: now + 60 }).await.unwrap(), 1);
    assert!(
        db.call(TokensByUserId {
            user_id: "short".into()
        })
        .await
        .unwrap()
        .is_empty()
    );
    let kept = db
        .call(TokensByUserId {
            user_id: "long".into(),
        })
        .await
        .unwrap();
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
    let read = db
        .call(GetCredential {
            user_id: "sub".into(),
            provider: "IAM".into(),
        })
        .await;
    let v1 = read.unwrap().unwrap().version();

    let store_refreshed = |expected, update| StoreRefreshed {
        expected,
        user_id: "sub".into(),
        provider: "IAM".into(),
        update,
        now: unix_now(),
    };
    let written = db
        .call(store_refreshed(v1, refreshed("rt-2", "at-2")))
        .await
        .unwrap();
    assert_eq!(written.generation, v1.generation + 1);
    assert_eq!(written.refresh_token.expose(), "rt-2");
    assert_eq!(written.audience.as_deref(), Some("https://ce.example.org"));
    assert_eq!(written.scope, "compute.read openid");

    let stale = db
        .call(store_refreshed(v1, refreshed("rt-stale", "at-stale")))
        .await;
    assert!(matches!(stale, Err(DbError::Conflict { .. })), "{stale:?}");

    // updateToken (a new login) also moves the generation: a refresh begun before it loses.
    let v2 = written.version();
    store_token(db, new_token("sub", "IAM", "rt-login", "at")).await;
    let lost = db
        .call(store_refreshed(v2, refreshed("rt-late", "at-late")))
        .await;
    assert!(matches!(lost, Err(DbError::Conflict { .. })));
    let now_stored = db
        .call(GetCredential {
            user_id: "sub".into(),
            provider: "IAM".into(),
        })
        .await;
    assert_eq!(
        now_stored.unwrap().unwrap().refresh_token.expose(),
        "rt-login"
    );

    // A credential deleted and stored again is a new row: old versions stay stale.
    db.call(RemoveTokens {
        user_id: "sub".into(),
    })
    .await
    .unwrap();
    store_token(db, new_token("sub", "IAM", "rt-new", "at")).await;
    let again = db
        .call(store_refreshed(v1, refreshed("rt-ghost", "at")))
        .await;
    assert!(matches!(again, Err(DbError::Conflict { .. })));
}

async fn needs_redelegation_is_compare_and_set_and_cleared_by_a_new_login(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    store_token(db, new_token("sub", "IAM", "rt", "at")).await;
    let v1 = db
        .call(credential_query())
        .await
        .unwrap()
        .unwrap()
        .version();
    db.call(MarkNeedsRedelegation {
        expected: v1,
        now: unix_now(),
    })
    .await
    .unwrap();
    let marked = db.call(credential_query()).await.unwrap().unwrap();
    assert_eq!(marked.state, CredentialState::NeedsRedelegation);
    let stale = db
        .call(MarkNeedsRedelegation {
            expected: v1,
            now: unix_now(),
        })
        .await;
    assert!(matches!(stale, Err(DbError::Conflict { .. })));

    store_token(db, new_token("sub", "IAM", "rt-new", "at")).await;
    let relogged = db.call(credential_query()).await.unwrap().unwrap();
    assert_eq!(relogged.state, CredentialState::Active);
}

fn credential_query() -> GetCredential {
    GetCredential {
        user_id: "sub".into(),
        provider: "IAM".into(),
    }
}
