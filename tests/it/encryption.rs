//! Encryption at rest, on each backend: dumps hold no token, moved or altered ciphertexts are
//! refused, and key rotation under concurrent writes loses nothing, also by the `rotate-key`
//! command over thousands of rows.

use tokenmanager::actors::db::DbOperation;
use tokenmanager::config::Backend;
use tokenmanager::crypto::CryptoError;
use tokenmanager::db::{DbError, TokenUpdate};
use tokenmanager::domain::{Secret, unix_now};

use crate::on_every_backend;
use crate::process::{run, stderr};
use crate::support::{
    TestStore, get_credential, new_token, store_refreshed, store_token, tokens_by_user_id,
};
use crate::test_config::TestConfig;

on_every_backend!(
    a_dump_of_the_database_holds_no_token_in_clear,
    ciphertexts_moved_to_another_row_or_column_are_refused,
    rotate_key_under_concurrent_writes_loses_nothing,
    rotate_key_command_reencrypts_thousands_of_rows_while_a_server_writes,
);

async fn a_dump_of_the_database_holds_no_token_in_clear(backend: Backend) {
    let store = TestStore::new(backend).await;
    let refresh = "RT-CLEARTEXT-MARKER-7f3a";
    let access = "AT-CLEARTEXT-MARKER-91bc";
    let token = new_token("sub-dump", "IAM", refresh, access);
    store_token(&store.database, token).await;

    let dump = store.db.dump();
    let text = String::from_utf8_lossy(&dump);
    assert!(
        text.contains("sub-dump"),
        "the dump has the row (user ids are not secret)"
    );
    for marker in [refresh, access, "CLEARTEXT-MARKER"] {
        assert!(
            !text.contains(marker),
            "{marker} found in the {} dump",
            backend.name()
        );
    }
    if backend == Backend::Sqlite {
        // The database files themselves, WAL included.
        for entry in std::fs::read_dir(store.db.dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(16).any(|w| w == b"CLEARTEXT-MARKER"));
        }
    }
}

async fn ciphertexts_moved_to_another_row_or_column_are_refused(backend: Backend) {
    let store = TestStore::new(backend).await;
    let db = &store.database;
    for user in ["victim", "attacker"] {
        let token = new_token(user, "IAM", &format!("rt-{user}"), &format!("at-{user}"));
        store_token(db, token).await;
    }
    let tampered = |result: Result<_, DbError>| {
        matches!(result, Err(DbError::Crypto(CryptoError::Tampered(_))))
    };

    // The attacker's ciphertexts relabelled as another user's row.
    store
        .db
        .execute_raw("UPDATE tokens SET user_id = 'mallory' WHERE user_id = 'attacker'");
    let moved = tokens_by_user_id(db, "mallory").await;
    assert!(
        tampered(moved.map(|_| ())),
        "a row moved to another user must not decrypt"
    );

    // A refresh token copied into the access-token column of the same row.
    store
        .db
        .execute_raw("UPDATE tokens SET access_token = refresh_token WHERE user_id = 'victim'");
    let swapped = get_credential(db, "victim", "IAM").await;
    assert!(
        tampered(swapped.map(|_| ())),
        "a swapped column must not decrypt"
    );

    // A row that claims a key it was not sealed under.
    store.keyring_file.add_key(Some("k2")).unwrap();
    store.db.execute_raw(
        "UPDATE tokens SET key_id = 'k2', access_token = NULL WHERE user_id = 'victim'",
    );
    let rekeyed = get_credential(db, "victim", "IAM").await;
    assert!(tampered(rekeyed.map(|_| ())));
}

async fn rotate_key_under_concurrent_writes_loses_nothing(backend: Backend) {
    const USERS: usize = 8;
    let store = TestStore::new(backend).await;
    // The serving process: its keyring was loaded before the rotation and is never reloaded.
    let server = store.database.clone();
    for user in 0..USERS {
        let token = new_token(&format!("user-{user}"), "IAM", "rt-0", "at-0");
        store_token(&server, token).await;
    }

    // rotate-key: a new key, then passes over the rows from another process's view.
    let new_key = store.keyring_file.add_key(None).unwrap();
    let rotator = TestStore::open_database(&store.db, &store.keyring_file);

    let writers = (0..USERS).map(|user| {
        let server = server.clone();
        actix::spawn(async move {
            let user_id = format!("user-{user}");
            let mut last = 0;
            for round in 1..=12 {
                // Alternate the two token writers: a new login and a refresh (compare-and-set).
                if round % 2 == 0 {
                    let token = new_token(&user_id, "IAM", &format!("rt-{round}"), "at");
                    store_token(&server, token).await;
                    last = round;
                } else {
                    let current = get_credential(&server, &user_id, "IAM")
                        .await
                        .unwrap()
                        .unwrap();
                    let update = refreshed_in_round(round);
                    let write =
                        store_refreshed(&server, current.version(), &user_id, "IAM", update);
                    // Only this task writes this user, so the compare-and-set must succeed.
                    write.await.unwrap();
                    last = round;
                }
            }
            (user_id, last)
        })
    });
    let writers: Vec<_> = writers.collect();

    let mut passes = 0;
    let mut conflicts = 0;
    let mut after = 0;
    loop {
        let still_writing = writers.iter().any(|w| !w.is_finished());
        let batch = rotator
            .run(DbOperation::ReencryptPass, move |store, conn| {
                store.reencrypt_batch(conn, after, 3)
            })
            .await
            .unwrap();
        conflicts += batch.conflicts;
        passes += 1;
        match batch.last_id {
            Some(last_id) => after = last_id,
            None => {
                // The end of a sweep: the next one starts over for what was left behind.
                after = 0;
                let remaining = rotator
                    .run(DbOperation::RowsUnderOldKeys, |store, conn| {
                        store.rows_under_old_keys(conn)
                    })
                    .await
                    .unwrap();
                if remaining == 0 && !still_writing {
                    break;
                }
            }
        }
        assert!(passes < 10_000, "rotation did not converge");
        actix::clock::sleep(std::time::Duration::from_millis(1)).await;
    }

    for writer in writers {
        let (user_id, last) = writer.await.unwrap();
        for view in [&server, &rotator] {
            let stored = get_credential(view, &user_id, "IAM")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                stored.refresh_token.expose(),
                format!("rt-{last}"),
                "{user_id} lost a write"
            );
            assert_eq!(
                stored.key_id, new_key,
                "{user_id} is sealed under the new key"
            );
        }
    }
    assert!(
        passes > 1,
        "the rotation ran while the writers wrote ({passes} passes, {conflicts} conflicts)"
    );
}

/// The `rotate-key` binary over 4,000 rows in batches of 500, while this process (a serving
/// replica whose keyring was loaded before the rotation) keeps rewriting every 80th credential:
/// every row ends under the new key, and no write of the server is lost or undone.
async fn rotate_key_command_reencrypts_thousands_of_rows_while_a_server_writes(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const ROWS: usize = 4000;
    const HOT_EVERY: usize = 80;
    let store = TestStore::new(backend).await;
    let server = store.database.clone();
    // One transaction for the fill: rows stored one commit each would make this test slow.
    server
        .run_within(DbOperation::UpdateToken, None, |store, conn| {
            use diesel::Connection;
            conn.transaction(|conn| {
                for user in 0..ROWS {
                    let token = new_token(&format!("user-{user}"), "IAM", "rt-0", "at-0");
                    store.update_token(conn, &token, unix_now())?;
                }
                Ok::<_, DbError>(())
            })
        })
        .await
        .unwrap();
    let config = TestConfig::on(&store.db).write("tm.cfg");

    let rotating = Arc::new(AtomicBool::new(true));
    let writes_during_rotation = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (server, rotating) = (server.clone(), rotating.clone());
        let writes = writes_during_rotation.clone();
        actix::spawn(async move {
            let mut last = vec![0; ROWS];
            let mut round = 0;
            // At least one full round after the rotation, so that writes that follow it count too.
            let mut rounds_after = 0;
            while rounds_after < 2 {
                round += 1;
                if !rotating.load(Ordering::Relaxed) {
                    rounds_after += 1;
                }
                for user in (0..ROWS).step_by(HOT_EVERY) {
                    let user_id = format!("user-{user}");
                    // Read first, as the token path does: a row sealed under the new key makes
                    // the server re-read its keyring (and seal with the new key from then on).
                    let current = get_credential(&server, &user_id, "IAM")
                        .await
                        .unwrap()
                        .unwrap();
                    if round % 2 == 0 {
                        let token = new_token(&user_id, "IAM", &format!("rt-{round}"), "at");
                        store_token(&server, token).await;
                    } else {
                        let update = refreshed_in_round(round);
                        // Only this task writes these rows, and a re-seal keeps the generation:
                        // the compare-and-set must succeed.
                        store_refreshed(&server, current.version(), &user_id, "IAM", update)
                            .await
                            .unwrap();
                    }
                    last[user] = round;
                    if rotating.load(Ordering::Relaxed) {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            last
        })
    };

    let rotation = {
        let config = config.clone();
        std::thread::spawn(move || {
            run(
                &[
                    "rotate-key",
                    "--config",
                    config.to_str().unwrap(),
                    "--batch",
                    "500",
                ],
                &[],
            )
        })
    };
    while !rotation.is_finished() {
        actix::clock::sleep(std::time::Duration::from_millis(20)).await;
    }
    rotating.store(false, Ordering::Relaxed);
    let output = rotation.join().unwrap();
    let last = writer.await.unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let rewritten: usize = stdout
        .split("re-encrypted ")
        .last()
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stdout}"));
    // The rows the server rewrote after it had met the new key are not rotate-key's to re-seal.
    assert!(rewritten >= ROWS - ROWS / HOT_EVERY, "{stdout}");
    let during = writes_during_rotation.load(Ordering::Relaxed);
    assert!(
        during > 0,
        "the server wrote nothing while rotate-key ran: {stdout}"
    );

    let new_key = std::fs::read_to_string(store.keyring_file.path())
        .unwrap()
        .lines()
        .last()
        .and_then(|line| line.split(' ').next())
        .unwrap()
        .to_owned();
    let reader = TestStore::open_database(&store.db, &store.keyring_file);
    let stored = reader
        .run_within(DbOperation::Credential, None, |store, conn| {
            (0..ROWS)
                .map(|user| store.credential(conn, &format!("user-{user}"), "IAM"))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
    for (user, stored) in stored.into_iter().enumerate() {
        let stored = stored.unwrap_or_else(|| panic!("user-{user} is gone"));
        assert_eq!(
            stored.key_id, new_key,
            "user-{user} is not under the new key"
        );
        assert_eq!(
            stored.refresh_token.expose(),
            format!("rt-{}", last[user]),
            "user-{user}: the server's last write was lost"
        );
    }
    let left = reader
        .run(DbOperation::RowsUnderOldKeys, |store, conn| {
            store.rows_under_old_keys(conn)
        })
        .await
        .unwrap();
    assert_eq!(left, 0);
    eprintln!(
        "{}: {during} server writes during the rotation; {}",
        backend.name(),
        stdout.lines().last().unwrap_or_default()
    );
}

/// A refresh's write as the concurrent writers of these tests make it: refresh token `rt-<round>`,
/// no access token.
fn refreshed_in_round(round: usize) -> TokenUpdate {
    TokenUpdate {
        refresh_token: Secret::new(format!("rt-{round}")),
        rt_expires_at: unix_now() + 3600,
        access_token: None,
        expires_at: 0,
        expires_in: 0,
        token_type: None,
        scope: String::new(),
        audience: None,
    }
}
