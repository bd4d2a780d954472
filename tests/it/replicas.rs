//! Replicas on one database keep their token caches in step through the changes the database
//! announces (PostgreSQL NOTIFY, the MariaDB and SQLite change log): a change made through one
//! replica, a command-line tool or an operator's SQL is applied by every other within the
//! staleness bound `MaxStaleness` (1 s by default), and cache hits ask the database nothing.
//! Every figure a test measures is printed as `measured: …`.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::{Value, json};
use tokenmanager::config::Backend;

use crate::client::http_get;
use crate::get_token::{CE, Setup, setup_with};
use crate::metrics::sample;
use crate::support::TestDb;

/// The default `MaxStaleness`: how stale a replica's cache may be.
pub(crate) const STALENESS_BOUND: Duration = Duration::from_secs(1);

fn access_token(reply: &crate::client::Reply) -> Value {
    reply.body()["value"]["access_token"].clone()
}

/// Asks `replica` for `plain`'s token until `done` says the reply is the expected one (`what`);
/// returns how long that took after `since`, after checking it is within the staleness bound.
pub(crate) fn within_the_bound(
    setup: &Setup,
    replica: usize,
    what: &str,
    since: Instant,
    done: impl Fn(&crate::client::Reply) -> bool,
) -> Duration {
    loop {
        let reply = setup.get_token_via(replica, Some("plain"), Some(CE), 0);
        let took = since.elapsed();
        if done(&reply) {
            eprintln!("measured: replica {replica}: {what} after {took:?}");
            return took;
        }
        assert!(
            took <= STALENESS_BOUND,
            "replica {replica}: {what} not seen {took:?} after the change: {reply:?}"
        );
    }
}

/// Replica `replica`'s sample of `series`.
pub(crate) fn metric(setup: &Setup, replica: usize, series: &str) -> f64 {
    let (_, exposition) = http_get(setup.processes[replica].metrics, "/metrics");
    sample(&exposition, series).unwrap_or_else(|| panic!("no {series}"))
}

pub(crate) const VERSION_CHECKS: &str =
    "tokenmanager_db_operations_total{operation=\"credential_version\",outcome=\"ok\"}";

/// Two replicas, each with `plain`'s token cached.
fn two_replicas_with_a_cached_token(backend: Backend) -> (Setup, Value) {
    let setup = setup_with(TestDb::new(backend), 2, &["other".to_owned()], |_| {});
    setup.delegate("plain");
    let first = setup.get_token_via(0, Some("plain"), Some(CE), 0);
    assert_eq!(first.status(), Some(200), "{first:?}");
    let token = access_token(&first);
    // The second replica serves the token the first stored, without a refresh of its own.
    let second = setup.get_token_via(1, Some("plain"), Some(CE), 0);
    assert_eq!(access_token(&second), token);
    assert_eq!(setup.idp.stats().refreshes("id-plain"), 1);
    (setup, token)
}

fn cache_hits_ask_the_database_nothing(backend: Backend) {
    let (setup, token) = two_replicas_with_a_cached_token(backend);
    // Once the feed has confirmed the cache, hits are answered from it alone.
    std::thread::sleep(Duration::from_millis(300));
    for replica in 0..2 {
        let _ = setup.get_token_via(replica, Some("plain"), Some(CE), 0);
        let checks = metric(&setup, replica, VERSION_CHECKS);
        for _ in 0..50 {
            let reply = setup.get_token_via(replica, Some("plain"), Some(CE), 0);
            assert_eq!(access_token(&reply), token);
        }
        assert_eq!(
            metric(&setup, replica, VERSION_CHECKS),
            checks,
            "replica {replica}: a cache hit asked the database"
        );
        assert_eq!(
            metric(&setup, replica, "tokenmanager_change_feed_fallback"),
            0.0
        );
    }
}

#[test]
fn postgresql_cache_hits_ask_the_database_nothing() {
    cache_hits_ask_the_database_nothing(Backend::Postgres);
}

#[test]
fn mariadb_cache_hits_ask_the_database_nothing() {
    cache_hits_ask_the_database_nothing(Backend::Mysql);
}

/// updateToken through one replica: the other serves a token of the new credential within the
/// bound (its cached token came from the replaced one, whose refresh token was revoked).
fn a_new_login_is_served_by_the_other_replica_within_the_bound(backend: Backend) {
    let (setup, old) = two_replicas_with_a_cached_token(backend);
    setup.delegate("plain");
    let stored = Instant::now();
    within_the_bound(&setup, 1, "a token of the new login", stored, |reply| {
        reply.status() == Some(200) && access_token(reply) != old
    });
    assert_eq!(setup.idp.stats().refresh_errors("id-plain"), 0);
}

#[test]
fn postgresql_a_new_login_is_served_by_the_other_replica_within_the_bound() {
    a_new_login_is_served_by_the_other_replica_within_the_bound(Backend::Postgres);
}

#[test]
fn mariadb_a_new_login_is_served_by_the_other_replica_within_the_bound() {
    a_new_login_is_served_by_the_other_replica_within_the_bound(Backend::Mysql);
}

/// A refresh through one replica (asked for more time than the cached token has): the other
/// serves the token it stored, within the bound and without a refresh of its own.
fn a_refresh_on_one_replica_is_served_by_the_other_without_a_second(backend: Backend) {
    let (setup, old) = two_replicas_with_a_cached_token(backend);
    let refreshed = setup.get_token_via(0, Some("plain"), Some(CE), 100_000);
    assert_eq!(refreshed.status(), Some(200), "{refreshed:?}");
    let new = access_token(&refreshed);
    assert_ne!(new, old);
    let stored = Instant::now();
    within_the_bound(&setup, 1, "the other replica's refresh", stored, |reply| {
        access_token(reply) == new
    });
    assert_eq!(
        setup.idp.stats().refreshes("id-plain"),
        2,
        "one refresh each time"
    );
    assert_eq!(setup.idp.stats().refresh_errors("id-plain"), 0);
}

#[test]
fn postgresql_a_refresh_on_one_replica_is_served_by_the_other_without_a_second() {
    a_refresh_on_one_replica_is_served_by_the_other_without_a_second(Backend::Postgres);
}

#[test]
fn mariadb_a_refresh_on_one_replica_is_served_by_the_other_without_a_second() {
    a_refresh_on_one_replica_is_served_by_the_other_without_a_second(Backend::Mysql);
}

/// The operator's SQL is announced like the service's own writes: a credential deleted by hand
/// is refused by every replica within the bound.
#[test]
fn postgresql_a_credential_deleted_by_hand_is_refused_within_the_bound() {
    let (setup, _) = two_replicas_with_a_cached_token(Backend::Postgres);
    setup
        .db()
        .execute_raw("DELETE FROM tokens WHERE user_id = 'id-plain'");
    let deleted = Instant::now();
    for replica in 0..2 {
        within_the_bound(&setup, replica, "the deletion", deleted, |reply| {
            reply.body()["code"] == json!("no_token")
        });
    }
}

/// The notification session killed (as a database restart or a network cut would): changes
/// announced while it was gone are lost, so every cached user token is confirmed with the
/// database once — a credential deleted meanwhile is refused, another is served, hits ask the
/// database nothing again — and the feed is back within the bound.
#[test]
fn postgresql_a_killed_notification_session_costs_one_check_per_cached_token() {
    let (setup, _) = two_replicas_with_a_cached_token(Backend::Postgres);
    setup.delegate("other");
    assert_eq!(
        setup.get_token_via(1, Some("other"), Some(CE), 0).status(),
        Some(200)
    );
    std::thread::sleep(Duration::from_millis(300));
    let gaps = metric(&setup, 1, "tokenmanager_change_feed_gaps_total");
    let killed = Instant::now();
    setup.db().execute_raw(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}' \
         AND datname = current_database(); \
         DELETE FROM tokens WHERE user_id = 'id-plain'",
        tokenmanager::db::READER_APPLICATION_NAME
    ));
    within_the_bound(
        &setup,
        1,
        "the deletion made while the feed was cut",
        killed,
        |reply| reply.body()["code"] == json!("no_token"),
    );
    let recovered = loop {
        if metric(&setup, 1, "tokenmanager_change_feed_gaps_total") > gaps
            && metric(&setup, 1, "tokenmanager_change_feed_fallback") == 0.0
        {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < STALENESS_BOUND, "the feed is not back");
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("measured: the feed back {recovered:?} after its session was killed");
    let checks = metric(&setup, 1, VERSION_CHECKS);
    for _ in 0..20 {
        let reply = setup.get_token_via(1, Some("other"), Some(CE), 0);
        assert_eq!(reply.status(), Some(200), "{reply:?}");
    }
    assert_eq!(
        metric(&setup, 1, VERSION_CHECKS) - checks,
        1.0,
        "one check for the token cached before the gap, then none"
    );
}

/// A change-log id that commits after a later one (ids are allocated at insert, not at commit)
/// is not skipped: a deletion held uncommitted past the reader's grace for missing ids is still
/// applied once it commits.
#[test]
fn mariadb_a_change_committed_after_a_later_one_is_not_skipped() {
    let (setup, _) = two_replicas_with_a_cached_token(Backend::Mysql);
    setup.delegate("other");
    let other = setup.get_token_via(1, Some("other"), Some(CE), 0);
    assert_eq!(other.status(), Some(200), "{other:?}");

    let mut held = MysqlConnection::establish(&setup.db().url).unwrap();
    held.batch_execute("BEGIN; DELETE FROM tokens WHERE user_id = 'id-other'")
        .unwrap();
    // A later id commits first.
    let deleted = setup.call_via(
        0,
        &setup.manager,
        "deleteToken",
        json!({"userDN": "id-plain"}),
    );
    assert_eq!(deleted.status(), Some(200), "{deleted:?}");
    let committed = Instant::now();
    within_the_bound(&setup, 1, "the later deletion", committed, |reply| {
        reply.body()["code"] == json!("no_token")
    });
    // Longer than the reader waits for an id nobody holds: this one is held.
    std::thread::sleep(Duration::from_secs(3));
    let reply = setup.get_token_via(1, Some("other"), Some(CE), 0);
    assert_eq!(reply.status(), Some(200), "not deleted yet: {reply:?}");

    held.batch_execute("COMMIT").unwrap();
    let committed = Instant::now();
    let reply = |setup: &Setup| setup.get_token_via(1, Some("other"), Some(CE), 0);
    loop {
        let took = committed.elapsed();
        if reply(&setup).body()["code"] == json!("no_token") {
            eprintln!("measured: the earlier id applied {took:?} after its commit");
            break;
        }
        assert!(took <= STALENESS_BOUND, "the earlier id was skipped");
    }
}

/// `serve` on SQLite notices what a command-line writer commits to its file (here an
/// operator's SQL, as `sqlite3` would).
#[test]
fn sqlite_serve_notices_a_command_line_writer_within_the_bound() {
    let setup = setup_with(TestDb::new(Backend::Sqlite), 0, &[], |_| {});
    setup.delegate("plain");
    assert_eq!(
        setup.get_token(Some("plain"), Some(CE), 0).status(),
        Some(200)
    );
    std::thread::sleep(Duration::from_millis(300));
    setup
        .db()
        .execute_raw("DELETE FROM tokens WHERE user_id = 'id-plain'");
    let deleted = Instant::now();
    within_the_bound(&setup, 0, "the deletion", deleted, |reply| {
        reply.body()["code"] == json!("no_token")
    });
}

/// The staleness measurement of `bench/staleness.sh` (not a CI test: a figure, not a check):
/// `TOKENMANAGER_STALENESS_SAMPLES` times, a credential is stored and cached by the replica that
/// measures, deleted by another writer (a second replica; on SQLite, SQL on the file), and
/// asked for over a kept-alive connection until it is refused. Prints the median and the worst.
fn measure_staleness(backend: Backend) {
    let samples: usize = std::env::var("TOKENMANAGER_STALENESS_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let sqlite = backend == Backend::Sqlite;
    let setup = setup_with(
        TestDb::new(backend),
        if sqlite { 0 } else { 2 },
        &[],
        |_| {},
    );
    let observer = if sqlite { 0 } else { 1 };
    let mut connection = crate::client::Connection::open(setup.https_ports[observer], &setup.full);
    let body = json!({"username": "plain", "userGroup": "g_user", "scope": ["compute.read"],
                      "audience": CE})
    .to_string();
    let mut measured = Vec::with_capacity(samples);
    for _ in 0..samples {
        setup.delegate("plain");
        let (status, reply) = connection.post("/api/v1/getToken", &body);
        assert_eq!(status, 200, "{reply}");
        // Let the feed confirm the token, as it does within 0.1 s in service.
        std::thread::sleep(Duration::from_millis(200));
        let deleted = if sqlite {
            setup
                .db()
                .execute_raw("DELETE FROM tokens WHERE user_id = 'id-plain'");
            Instant::now()
        } else {
            let reply = setup.call_via(
                0,
                &setup.manager,
                "deleteToken",
                json!({"userDN": "id-plain"}),
            );
            assert_eq!(reply.status(), Some(200));
            Instant::now()
        };
        loop {
            let (_, reply) = connection.post("/api/v1/getToken", &body);
            if reply["code"] == json!("no_token") {
                measured.push(deleted.elapsed());
                break;
            }
            assert!(deleted.elapsed() < Duration::from_secs(10), "never refused");
        }
    }
    measured.sort();
    eprintln!(
        "measured: staleness on {}: median {:?}, worst {:?}, best {:?} over {samples} deletions",
        backend.name(),
        measured[samples / 2],
        measured[samples - 1],
        measured[0]
    );
}

#[test]
#[ignore = "a measurement: bench/staleness.sh"]
fn staleness_on_postgresql() {
    measure_staleness(Backend::Postgres);
}

#[test]
#[ignore = "a measurement: bench/staleness.sh"]
fn staleness_on_mariadb() {
    measure_staleness(Backend::Mysql);
}

#[test]
#[ignore = "a measurement: bench/staleness.sh"]
fn staleness_on_sqlite() {
    measure_staleness(Backend::Sqlite);
}

/// The change log keeps what a late reader may still need and loses the rest in short batches.
async fn the_change_log_is_pruned_past_its_retention(backend: Backend) {
    let store = crate::support::TestStore::new(backend).await;
    let retention = tokenmanager::db::LOG_RETENTION.as_secs() as i64;
    let now = tokenmanager::domain::unix_now();
    let rows = |count: usize, created_at: i64| {
        (0..count)
            .map(|i| format!("('credential', 'u{i}', 'IAM', {i}, 1, {created_at})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // More than one pruning batch of old rows, and a recent one.
    for _ in 0..3 {
        store.db.execute_raw(&format!(
            "INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at) \
             VALUES {}",
            rows(9_000, now - retention - 60)
        ));
    }
    store.db.execute_raw(&format!(
        "INSERT INTO token_changes (kind, subject, provider, row_id, generation, created_at) \
         VALUES {}",
        rows(1, now - 60)
    ));
    let mut reader = tokenmanager::db::ChangeReader::new(&store.db.database_url(), 1);
    reader.read(true).unwrap();
    assert_eq!(reader.prune().unwrap(), 27_000);
    assert_eq!(reader.prune().unwrap(), 0, "the recent row stays");
}

#[actix_rt::test]
async fn mariadb_the_change_log_is_pruned_past_its_retention() {
    the_change_log_is_pruned_past_its_retention(Backend::Mysql).await;
}

#[actix_rt::test]
async fn sqlite_the_change_log_is_pruned_past_its_retention() {
    the_change_log_is_pruned_past_its_retention(Backend::Sqlite).await;
}
